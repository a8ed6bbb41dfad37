import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `import bad_inputs` (this folder) and `import export_models`, `import trt_double` (tests/export).
for folder in (HERE, HERE.parent / "export"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
