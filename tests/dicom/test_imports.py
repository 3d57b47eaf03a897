"""What a hub process loads for DICOM before it parses an object: not pydicom, which imports
numpy, Pillow and its pixel handlers (about 40 MB in every worker)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pydicom", "numpy", "PIL", "pynetdicom", "dicomanonymizer")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


def test_importing_the_hub_loads_no_dicom_library():
    assert _loaded_after("import hub.api.app, hub.dicom.web, hub.dicom.service, hub.dicom.store") == []


def test_parsing_an_object_loads_pydicom_and_the_dimse_services_load_pynetdicom():
    assert "pydicom" in _loaded_after("import hub.dicom.store as s; s._indexed_tags()")
    assert "pynetdicom" in _loaded_after("import hub.dicom.scp")
