"""The state directory: the managed key pair, pinned host keys and atomic 0600 JSON records."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from jupyter_ec2.errors import ConflictError, ValidationError
from jupyter_ec2.keys import generate_ed25519, read_private_key
from jupyter_ec2.store import StateStore

INSTANCE = "i-0123456789abcdef0"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_zero():
    """Run the test with umask 0, so nothing but explicit modes protects new files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_state_dir_is_private(tmp_path, umask_zero):
    # Given no state directory yet, and a loose existing one
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)

    # When stores open them
    StateStore(tmp_path / "a" / "state")
    StateStore(loose)

    # Then both are 0700
    assert _mode(tmp_path / "a" / "state") == 0o700
    assert _mode(loose) == 0o700


def test_key_file_is_0600_from_the_moment_it_exists(tmp_path, umask_zero, monkeypatch):
    # Given a new store, umask 0, and a spy that looks at every file the store creates as
    # soon as it exists (before anything is written to it)
    store = StateStore(tmp_path / "state")
    created: dict[str, int] = {}
    real_open = os.open

    def spying_open(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & os.O_CREAT:
            created[os.fspath(path)] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd

    monkeypatch.setattr(os, "open", spying_open)

    # When the key pair is created
    material = store.load_or_create_key_pair()

    # Then every file holding the key was 0600 from its creation, and the key file is too
    assert created, "the spy saw no file being created"
    assert set(created.values()) == {0o600}
    assert _mode(store.key_path) == 0o600
    assert read_private_key(store.key_path) == material
    # and no temporary copy is left behind
    assert [p.name for p in store.root.iterdir()] == ["id_ed25519"]


def test_key_pair_is_reused_and_never_overwritten(tmp_path):
    # Given a store that made its key pair
    store = StateStore(tmp_path / "state")
    first = store.load_or_create_key_pair()
    before = store.key_path.read_bytes()

    # When it is asked again, also by a second store on the same directory
    again = store.load_or_create_key_pair()
    other = StateStore(tmp_path / "state").load_or_create_key_pair()

    # Then the same key comes back and the file is untouched
    assert again == first == other
    assert store.key_path.read_bytes() == before


def test_concurrent_first_use_makes_one_key(tmp_path):
    # Given several threads opening a fresh state directory at once
    results = []
    stores = [StateStore(tmp_path / "state") for _ in range(6)]
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.load_or_create_key_pair()))
        for s in stores
    ]

    # When they all ask for the key pair
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then they all got the one key that is on disk
    on_disk = read_private_key(tmp_path / "state" / "id_ed25519")
    assert results == [on_disk] * 6


def test_loose_key_file_is_refused(tmp_path):
    # Given a key file someone made world-readable
    store = StateStore(tmp_path / "state")
    store.load_or_create_key_pair()
    os.chmod(store.key_path, 0o644)
    before = store.key_path.read_bytes()

    # When the key pair is loaded
    with pytest.raises(ValidationError) as err:
        store.load_or_create_key_pair()

    # Then it is refused, naming the key file, and the file is left as it was
    assert err.value.field == "key_file"
    assert "chmod 600" in err.value.message
    assert str(tmp_path) not in err.value.message
    assert store.key_path.read_bytes() == before


def test_host_key_pinning(tmp_path, umask_zero):
    # Given a store and a host key
    store = StateStore(tmp_path / "state")
    host = generate_ed25519(comment="jupyter-ec2-host")

    # When the key is pinned for an instance (twice: pinning is idempotent)
    assert store.pinned_host_key(INSTANCE) is None
    store.pin_host_key(INSTANCE, host.public_openssh)
    store.pin_host_key(INSTANCE, host.public_openssh)

    # Then it reads back without its comment, from a private file
    assert store.pinned_host_key(INSTANCE) == " ".join(host.public_openssh.split()[:2])
    assert _mode(tmp_path / "state" / "host_keys" / f"{INSTANCE}.pub") == 0o600
    assert _mode(tmp_path / "state" / "host_keys") == 0o700


def test_a_pinned_host_key_cannot_be_replaced(tmp_path):
    # Given an instance with a pinned key
    store = StateStore(tmp_path / "state")
    store.pin_host_key(INSTANCE, generate_ed25519().public_openssh)
    pinned = store.pinned_host_key(INSTANCE)

    # When another key is pinned for it
    with pytest.raises(ConflictError):
        store.pin_host_key(INSTANCE, generate_ed25519().public_openssh)

    # Then the first key stays
    assert store.pinned_host_key(INSTANCE) == pinned


@pytest.mark.parametrize(
    ("instance_id", "key", "field"),
    [
        ("../../etc/passwd", None, "instance_id"),
        ("i-XYZ", None, "instance_id"),
        (INSTANCE, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7", "public_key"),
        (INSTANCE, "not a key", "public_key"),
        (INSTANCE, "ssh-ed25519 AAAA\nssh-ed25519 BBBB", "public_key"),
    ],
)
def test_bad_pins_are_refused(tmp_path, instance_id, key, field):
    store = StateStore(tmp_path / "state")
    key = key or generate_ed25519().public_openssh
    with pytest.raises(ValidationError) as err:
        store.pin_host_key(instance_id, key)
    assert err.value.field == field
    assert not (tmp_path / "state" / "host_keys").exists() or not any(
        (tmp_path / "state" / "host_keys").iterdir()
    )


def test_json_records_are_atomic_and_private(tmp_path, umask_zero):
    # Given a store
    store = StateStore(tmp_path / "state")

    # When a record is written, then overwritten
    store.write_json_secret(f"{INSTANCE}.token", {"token": "a" * 64})
    store.write_json_secret(f"{INSTANCE}.token", {"token": "b" * 64})

    # Then it reads back the latest value, is 0600, and no temporary file is left
    assert store.read_json(f"{INSTANCE}.token") == {"token": "b" * 64}
    assert _mode(tmp_path / "state" / f"{INSTANCE}.token.json") == 0o600
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [f"{INSTANCE}.token.json"]
    assert store.read_json("missing") is None


def test_failed_write_keeps_the_old_record(tmp_path):
    # Given a record
    store = StateStore(tmp_path / "state")
    store.write_json_secret("ports", {"a": 1})

    # When a write fails half-way (the value cannot be serialised)
    with pytest.raises(TypeError):
        store.write_json_secret("ports", {"a": object()})

    # Then the old value is intact and nothing else is left behind
    assert store.read_json("ports") == {"a": 1}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["ports.json"]


def test_loose_or_broken_records_are_refused(tmp_path):
    # Given a record made world-readable and another that is not JSON
    store = StateStore(tmp_path / "state")
    store.write_json_secret("loose", {"x": 1})
    os.chmod(tmp_path / "state" / "loose.json", 0o644)
    store.write_json_secret("broken", {"x": 1})
    (tmp_path / "state" / "broken.json").write_text("{not json")

    # Then reading either is refused, naming the state directory
    for name in ("loose", "broken"):
        with pytest.raises(ValidationError) as err:
            store.read_json(name)
        assert err.value.field == "state_dir"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200, "a..b", None])
def test_record_names_are_checked(tmp_path, name):
    store = StateStore(tmp_path / "state")
    with pytest.raises(ValidationError):
        store.write_json_secret(name, {})


def test_forget_removes_only_that_instance(tmp_path):
    # Given records and pins of two instances, one id a prefix of the other, and a global record
    store = StateStore(tmp_path / "state")
    short = "i-01234567"  # an old-style id that is a prefix of INSTANCE
    for iid in (short, INSTANCE):
        store.pin_host_key(iid, generate_ed25519().public_openssh)
        store.write_json_secret(iid, {"id": iid})
        store.write_json_secret(f"{iid}.token", {"t": 1})
    store.write_json_secret("ports", {"x": 1})

    # When the short one is forgotten
    store.forget(short)

    # Then its pin and records are gone, the rest stays
    assert store.pinned_host_key(short) is None
    assert store.read_json(short) is None
    assert store.read_json(f"{short}.token") is None
    assert store.pinned_host_key(INSTANCE) is not None
    assert store.read_json(INSTANCE) == {"id": INSTANCE}
    assert store.read_json(f"{INSTANCE}.token") == {"t": 1}
    assert store.read_json("ports") == {"x": 1}


def _pub(material) -> str:
    return " ".join(material.public_openssh.split()[:2])


def test_host_key_rotation_pins_the_new_key_and_retires_the_old(tmp_path, umask_zero):
    # Given an instance pinned with its handed-over key
    store = StateStore(tmp_path / "state")
    handed_over, made_there = _pub(generate_ed25519()), _pub(generate_ed25519())
    store.pin_host_key(INSTANCE, handed_over)
    assert not store.host_key_rotated(INSTANCE)

    # When a rotation begins (the new key learnt over a verified session) and finishes
    store.begin_host_key_rotation(INSTANCE, handed_over, made_there)
    during = (store.pinned_host_key(INSTANCE), store.pending_host_key(INSTANCE))
    store.finish_host_key_rotation(INSTANCE, made_there)

    # Then the old key stayed pinned until the finish, and the new one is pinned after it,
    # in 0600 files, surviving a new store on the same directory (a local restart)
    assert during == (handed_over, made_there)
    again = StateStore(tmp_path / "state")
    assert again.pinned_host_key(INSTANCE) == made_there
    assert again.retired_host_key(INSTANCE) == handed_over
    assert again.pending_host_key(INSTANCE) is None
    assert again.host_key_rotated(INSTANCE)
    for path in (tmp_path / "state" / "host_keys").iterdir():
        assert _mode(path) == 0o600
    # And finishing again is a no-op
    again.finish_host_key_rotation(INSTANCE, made_there)
    assert again.pinned_host_key(INSTANCE) == made_there


def test_host_key_rotation_refuses_keys_it_did_not_begin_with(tmp_path):
    # Given a pinned instance
    store = StateStore(tmp_path / "state")
    pinned, other, stranger = (_pub(generate_ed25519()) for _ in range(3))
    store.pin_host_key(INSTANCE, pinned)

    # When a rotation is begun from a key that is not the pinned one, or finished with a key
    # never pinned as coming
    with pytest.raises(ConflictError):
        store.begin_host_key_rotation(INSTANCE, other, stranger)
    store.begin_host_key_rotation(INSTANCE, pinned, other)
    with pytest.raises(ConflictError):
        store.finish_host_key_rotation(INSTANCE, stranger)

    # Then nothing changed, and forget removes every host key file of the instance
    assert store.pinned_host_key(INSTANCE) == pinned
    assert store.pending_host_key(INSTANCE) == other
    store.forget(INSTANCE)
    assert list((tmp_path / "state" / "host_keys").iterdir()) == []
