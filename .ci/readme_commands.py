"""Print the README Quickstart's main command and test command, one per line, for .ci/run.

The Quickstart holds three bash blocks: the install line, the main command (prepare and train on
the bundled corpus) and the test command. CI runs the last two exactly as a user would read them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

section = Path(sys.argv[1]).read_text(encoding="utf-8").split("## Quickstart", 1)[1]
section = section.split("\n## ", 1)[0]
blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]
if len(blocks) < 3:
    sys.exit(f"{sys.argv[1]}: the Quickstart needs 3 bash blocks (install, main, test)")
for block in blocks[1:3]:
    if "\n" in block:
        sys.exit(f"{sys.argv[1]}: a Quickstart command must be one line: {block!r}")
    print(block)
