"""The lifecycle benchmark still runs: every phase at ``--quick`` sizes on the test PostgreSQL.

No timing is asserted (performance lives in benchmarks/); each phase checks its own outcome
(the victim's rows gone and the others' left, half the sessions purged, a second import that
writes nothing) and reports a figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import lifecycle


@pytest.mark.slow
async def test_quick_lifecycle_benchmark_reports_every_phase(
    postgres_url: str, tmp_path: Path
) -> None:
    for phase in lifecycle.PHASES:  # in order: import reads the file export wrote
        result = await lifecycle.run_phase(phase, postgres_url, lifecycle.QUICK, tmp_path)
        assert result["rows"] > 0 and result["peak_rss_mib"] > 0, result
        assert lifecycle.line(result).startswith(result["what"])
