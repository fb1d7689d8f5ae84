"""Few-step students (``unmask distill``): the losses of SDTT and DCD (:mod:`.losses`) and the trainer that
distils a teacher run round by round (:mod:`.trainer`). Nothing is imported here: the run configuration
reads the losses' constants without loading the trainer."""
