"""Where the computation runs: device and execution mode, data-parallel launch, collectives."""
