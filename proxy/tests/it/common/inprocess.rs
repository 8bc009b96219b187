//! trustgate's own listener run inside the test process, on config text and a kernel
//! plan the test picks. It exists for the plan the binary never picks by itself on a
//! host with CAP_BPF — the classic-BPF socket filter — so that plan is still tested
//! through the proxy's real bind, accept and trust path. Drop stops it and detaches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proxy::connection::Runtime;
use proxy::kernel::{Attachment, Kernel, KernelError, Plan};
use proxy::listener::bind_all;
use proxy::server::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long in-flight requests may run on when the test drops the proxy.
const GRACE: Duration = Duration::from_secs(1);

pub struct InProcess {
    pub listeners: Vec<SocketAddr>,
    pub server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<usize>,
}

impl InProcess {
    /// Validates `config_text`, starts `plan` on its trusted list, binds (attaching the
    /// socket filter before `listen()`) and serves. Must run inside a tokio runtime.
    pub fn start(config_text: &str, plan: Plan) -> Result<InProcess, KernelError> {
        let (config, _warnings) =
            proxy::config::parse_str(config_text, "inprocess.toml").expect("test config is valid");
        let trust = config
            .proxy_protocol
            .as_ref()
            .map(|p| p.trust.clone())
            .unwrap_or_default();
        let mut kernel = Kernel::start(plan, &trust, &config.listeners.ports(), false)?;
        let bound = bind_all(&config, Some(&mut kernel)).expect("binding the listeners");
        let listeners = bound.iter().map(|b| b.local_addr()).collect();
        let runtime = Runtime::new(&config, None).expect("preparing the runtime");
        let server = Server::new(runtime, Some(kernel));
        let (stop, stopped) = oneshot::channel::<()>();
        server.serve(bound);
        let task = tokio::spawn(Arc::clone(&server).run(
            async move {
                let _ = stopped.await;
            },
            GRACE,
        ));
        Ok(InProcess {
            listeners,
            server,
            stop: Some(stop),
            task,
        })
    }

    /// Where the kernel filter is attached.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.server
            .with_kernel(|k| k.attachments())
            .unwrap_or_default()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        drop(self.server.take_kernel());
    }
}
