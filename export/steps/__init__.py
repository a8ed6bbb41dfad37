"""The export's steps, one module each; ``export/pipeline.py`` sequences them. Each step is a function of the run's
``base.State`` with a ``base.StepSpec`` naming the state fields it reads and writes (held at run time, and
checked against every sequence by tests/export/test_steps.py)."""
