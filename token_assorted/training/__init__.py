"""The one training skeleton both stages share (setup -> fit -> validate -> save on accelerate), its atomic
resume state, the seeded order of the examples, and the optimisation options both stages declare once
(options.py)."""
