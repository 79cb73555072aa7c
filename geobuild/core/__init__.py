"""The mechanism every stage shares: the stage contract, committing a unit, running a stage,
executors, the run folder, the ledger, schemas, errors and logging. Imports nothing else from geobuild."""
