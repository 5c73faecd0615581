"""Print the requirements of reco's extras, one a line, read from pyproject.toml (the image build installs
dependencies before copying the source, so a code change does not re-install them).

    python3 deploy/requirements.py serving pipeline
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
wanted = list(project["dependencies"])
for name in sys.argv[1:]:
    wanted += [r for r in extras[name] if not r.startswith("reco[")]
print("\n".join(dict.fromkeys(wanted)))
