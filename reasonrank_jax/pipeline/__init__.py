"""The whole job end to end: `demo` (data -> model -> SFT -> GRPO -> rerank -> evaluation, one resumable run) and
`sweep` (grids of demo runs over seeds -> tables and plots)."""
