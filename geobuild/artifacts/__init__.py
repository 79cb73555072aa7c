"""The arrows of the pipeline diagram: where each artifact lives in the run folder, how it is
written and read. What two stages share is a reader here, never an import of the other stage."""
