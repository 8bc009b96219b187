//! How an error is written for a person: the error and each of its causes, joined by
//! ": ", as anyhow's `{:#}` writes it. Log sites write `error = %Chain(&err)`, so that a
//! typed error whose message is a context ("attaching the socket filter to ...") does not
//! lose the OS error under it. An error that writes its cause into its own message keeps it
//! as a field, not as a `source()`, so nothing is written twice (see `config::ConfigError`).

use std::error::Error;
use std::fmt;

/// Displays `err` followed by every `source()` under it.
pub(crate) struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("binding 127.0.0.1:80")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once_in_order() {
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(
            Chain(&err).to_string(),
            "binding 127.0.0.1:80: permission denied"
        );
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        let err = std::io::Error::other("closed");
        assert_eq!(Chain(&err).to_string(), "closed");
    }
}
