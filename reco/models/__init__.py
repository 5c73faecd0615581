"""The session-aware ranker (`ranker`, torch) and its numpy serving twin (`scorer`). A leaf: no disk
I/O, no catalogue, no import of another reco package. The bundle on disk is `reco.artifacts.bundle`."""
