"""Distance-aware rankers: the multi-order loss (:mod:`.loss`), a compact cross-encoder
(:mod:`.compact`), the trainer (:mod:`.train`) and the evaluation (:mod:`.evaluate`)."""
