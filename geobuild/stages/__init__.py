"""The boxes of the pipeline diagram, one package each, in pipeline order.

A stage package exports its ``<Name>Stage`` (a :class:`geobuild.core.stage.Stage`) and its
``<Name>Config`` dataclass; its rules (preflight, what a rerun resets, what runs after) are hooks of
the stage, so ``geobuild run`` and the single-stage command run it the same way.
"""

#: stage name -> "module:StageClass:ConfigClass", in pipeline order (imported when a pipeline uses them)
STAGES: dict[str, str] = {
    "shard": "geobuild.stages.shard:ShardStage:ShardConfig",
    "embed": "geobuild.stages.embed:EmbedStage:EmbedConfig",
    "index": "geobuild.stages.index:IndexStage:IndexConfig",
    "mine": "geobuild.stages.mine:MineStage:MineConfig",
    "distances": "geobuild.stages.distances:DistancesStage:DistancesConfig",
    "publish": "geobuild.stages.publish:PublishStage:PublishConfig",
    "publish_upload": "geobuild.stages.publish:UploadStage:UploadConfig",
}
