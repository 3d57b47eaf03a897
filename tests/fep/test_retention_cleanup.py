"""DICOM retention cleanup: a file that cannot be deleted does not stop it for good."""

from __future__ import annotations

import logging
import os

from front_end_processor import node


def test_a_file_that_cannot_be_deleted_does_not_stop_the_retention_cleanup(tmp_path, monkeypatch, caplog):
    stuck, gone, fine = tmp_path / "1.2.3.0123456789ab.dcm", tmp_path / "1.2.4.0123456789ab.dcm", \
        tmp_path / "1.2.5.0123456789ab.dcm"
    stuck.write_bytes(b"x")
    fine.write_bytes(b"x")
    real_unlink = os.unlink

    def unlink(path, *a, **kw):
        if os.fspath(path) == str(stuck):
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(node.os, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger=node.__name__):
        node._unlink_all([str(stuck), str(gone), str(fine)])
    assert stuck.exists() and not fine.exists()
    assert "PermissionError x1" in caplog.text and "1.2.3" not in caplog.text
