//! `tidemark worker`: a datafusion-distributed worker that runs the tasks of
//! distributed runs.

use std::collections::HashMap;
use std::net::SocketAddr;

use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext};

use super::TidemarkCodec;
use crate::CliError;

/// Serves a worker on `listen` until the process ends, printing the address
/// it listens on (port 0 picks a free one).
pub(crate) async fn serve_worker(
    listen: SocketAddr,
    local_options: HashMap<String, String>,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::usage(format!("cannot read the address bound: {e}")))?;
    let codec = TidemarkCodec::new(local_options);
    let worker = Worker::from_session_builder(move |context: WorkerQueryContext| {
        let codec = codec.clone();
        async move { Ok(context.builder.with_distributed_user_codec(codec).build()) }
    });
    println!("tidemark worker listening on http://{bound}");
    tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| CliError::usage(format!("the worker on {bound} stopped: {e}")))
}
