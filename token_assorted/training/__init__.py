"""The one training skeleton both stages share (setup -> fit -> validate -> save on accelerate), its atomic
resume state, and the seeded order of the examples."""
