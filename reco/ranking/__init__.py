"""The request pipeline: candidates -> rank -> rules -> exploration (bandits) -> explanations;
`recommend` wires the steps and takes its side effects as Protocols."""
