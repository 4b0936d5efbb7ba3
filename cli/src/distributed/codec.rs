//! The plan nodes on the wire: a [`RunSpec`] as JSON, never the options of
//! the process that encodes it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use serde::{Deserialize, Serialize};

use super::nodes::{external, PipelineShardsExec, RunStage, RunStageExec};
use crate::spec::RunSpec;

/// Encodes the run's plan nodes for the wire: a [`RunSpec`] as JSON (no
/// secret in it), and on decoding adds the decoding process's own options.
#[derive(Debug, Clone, Default)]
pub(crate) struct TidemarkCodec {
    local_options: HashMap<String, String>,
}

/// A plan node as it crosses the wire.
#[derive(Serialize, Deserialize)]
enum WireNode {
    Shards { count: u32 },
    Stage { stage: RunStage, spec: Box<RunSpec> },
}

impl TidemarkCodec {
    /// A codec whose decoded nodes use `local_options` beside the shared ones.
    pub(crate) fn new(local_options: HashMap<String, String>) -> Self {
        TidemarkCodec { local_options }
    }
}

impl PhysicalExtensionCodec for TidemarkCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let node: WireNode = serde_json::from_slice(buf).map_err(external)?;
        let input = || {
            inputs.first().cloned().ok_or_else(|| {
                DataFusionError::Internal("a tidemark plan node arrived without its input".into())
            })
        };
        Ok(match node {
            WireNode::Shards { count } => Arc::new(PipelineShardsExec::new(count)),
            WireNode::Stage { stage, spec } => Arc::new(RunStageExec::new(
                stage,
                *spec,
                self.local_options.clone(),
                input()?,
            )),
        })
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> DataFusionResult<()> {
        let any = node.as_any();
        let wire = if let Some(shards) = any.downcast_ref::<PipelineShardsExec>() {
            WireNode::Shards {
                count: shards.count,
            }
        } else if let Some(node) = any.downcast_ref::<RunStageExec>() {
            WireNode::Stage {
                stage: node.stage,
                spec: Box::new(node.spec.clone()),
            }
        } else {
            return Err(DataFusionError::Internal(format!(
                "the tidemark codec cannot encode {}",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &wire).map_err(external)
    }
}
