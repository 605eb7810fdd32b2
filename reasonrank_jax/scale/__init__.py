"""Planning for TPU slices from a CPU host: topologies (`topology`), and compiling the real steps for them
(`plan`)."""
