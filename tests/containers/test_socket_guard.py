"""The socket guard: tests reach loopback and the harness's bridge subnet, nothing else.

Not marked ``containers``: the guard holds for every test (pyproject's ``--allow-hosts``).
"""

from __future__ import annotations

import socket

import pytest
import pytest_socket
from pytest_socket import SocketConnectBlockedError


@pytest.mark.parametrize("address", ["192.0.2.1", "10.0.0.1", "172.32.0.1", "198.51.100.7"])
def test_addresses_outside_loopback_and_the_bridge_subnet_are_refused(address):
    # Given the guard of pyproject's addopts (refuse to try at all when it is off, e.g. under
    # `-o addopts=`: a SYN would leave this machine)
    assert socket.socket.connect is not pytest_socket._true_connect, "the socket guard is off"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # When a test connects outside loopback and 172.31.0.0/16 / Then the guard refuses
        with pytest.raises(SocketConnectBlockedError):
            sock.connect((address, 9))
    finally:
        sock.close()


def test_loopback_is_allowed():
    # Given a closed loopback port (the bridge subnet is proven by the container tests, which
    # connect to their containers; no test here sends anything to an address it does not own)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # When a test connects / Then the guard lets it through and the OS refuses instead
        with pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", 9))
    finally:
        sock.close()
