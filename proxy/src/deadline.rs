//! A deadline that costs nothing until something waits on it: the timer is allocated at
//! the first wait, then moved to each new deadline. The bodies, the client stream and the
//! h2 streams use it for their pause and stall limits, which most never reach.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

#[derive(Debug, Default)]
pub(crate) struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Whether `at` has passed; if not, the task is woken when it does (or when it is
    /// asked again with another instant).
    pub(crate) fn passed(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_at_its_instant_and_follows_a_new_one() {
        let mut d = Deadline::default();
        let t0 = Instant::now();
        let at = t0 + Duration::from_secs(5);
        std::future::poll_fn(|cx| {
            if d.passed(at, cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(5));
        let later = Instant::now() + Duration::from_secs(3);
        std::future::poll_fn(|cx| {
            if d.passed(later, cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(8));
    }
}
