"""The shared local cluster listens on loopback only, serves its dashboard only when asked, and logs the link."""

from __future__ import annotations

import logging
import socket
import urllib.request
import warnings

import dask
import psutil
import pytest

from rfm_dask.parallel.cluster import close_local_client, dashboard_link, local_client


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("inet") if c.status == "LISTEN"}


class _Messages(logging.Handler):
    """Collects the messages of the ``rfm_dask`` logger (LocalCluster's start resets the levels of the root
    logger's handlers, caplog's among them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def port_8787_taken():
    """Hold 8787 (on loopback; if something else holds it already, it is taken all the same)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 8787))
        sock.listen()
    except OSError:
        pass
    yield
    sock.close()


@pytest.mark.parametrize("dashboard", [False, True])
def test_local_cluster_listens_on_loopback_only(dashboard, port_8787_taken, monkeypatch):
    close_local_client()
    logger, handler = logging.getLogger("rfm_dask"), _Messages()
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    before = _listening()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dask.config.set({"rfm.dashboard": dashboard}):
                client = local_client()
        opened = _listening() - before
        assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        assert 8787 not in {port for _, port in opened}
        assert not [w for w in caught if "already in use" in str(w.message)], [str(w.message) for w in caught]
        link = dashboard_link(client)
        assert link.startswith("http://127.0.0.1:")
        logged = [m for m in handler.messages if "dashboard" in m]
        if dashboard:
            assert logged == [f"Dask dashboard at {link}"]
            assert urllib.request.urlopen(link, timeout=10).status == 200
        else:
            assert not logged
    finally:
        logger.removeHandler(handler)
        close_local_client()
