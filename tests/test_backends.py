"""Digest resolvers: memo/TTL logic, error mapping, Podman and SIF resolution.

Real-daemon Docker behaviour is in tests/integration/test_docker.py; here the
Docker resolver is only exercised where no daemon is needed (unreachable
socket, missing SDK). Podman runs for real when installed (it can import and
inspect images as root without running containers), against a private image
store in tmp_path. Apptainer/Singularity are not packaged for this Debian
release; their resolver hashes the SIF file itself, so real files suffice.
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from conftest import require
from styxcache.backends import (
    DEFAULT_TTL,
    CachedDigestResolver,
    ContainerRuntimeUnavailableError,
    DigestResolutionError,
    DockerDigestResolver,
    ImageNotFoundError,
    PodmanDigestResolver,
    SingularityDigestResolver,
    docker_digest_resolver,
    podman_digest_resolver,
    singularity_digest_resolver,
)
from styxcache.backends.singularity_resolver import IMAGES_ENV


class FakeClock:
    """Manually advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingResolver(CachedDigestResolver):
    """Answers from a dict and counts how often the runtime was asked."""

    runtime = "test"

    def __init__(self, answers: dict[str, str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.answers = answers
        self.calls: list[str] = []
        self.fail_next: Exception | None = None

    def _resolve(self, tag: str) -> str:
        self.calls.append(tag)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return self.answers[tag]


# --------------------------------------------------------------------- memo/TTL


def test_answer_is_reused_until_ttl_expires_then_asked_again() -> None:
    clock = FakeClock()
    answers = {"img:1": "sha256:a"}
    resolver = CountingResolver(answers, ttl=60.0, clock=clock)
    assert resolver("img:1") == "sha256:a"
    answers["img:1"] = "sha256:b"  # the tag is moved
    clock.now += 59.9
    assert resolver("img:1") == "sha256:a"
    assert resolver.calls == ["img:1"]
    clock.now += 0.1  # exactly ttl after the first lookup: stale
    assert resolver("img:1") == "sha256:b"
    assert resolver.calls == ["img:1", "img:1"]


def test_ttl_zero_asks_every_time() -> None:
    answers = {"img:1": "sha256:a"}
    resolver = CountingResolver(answers, ttl=0, clock=FakeClock())
    assert resolver("img:1") == "sha256:a"
    answers["img:1"] = "sha256:b"
    assert resolver("img:1") == "sha256:b"
    assert resolver.calls == ["img:1", "img:1"]


def test_tags_are_memoised_independently() -> None:
    clock = FakeClock()
    resolver = CountingResolver({"a:1": "x", "b:1": "y"}, ttl=10.0, clock=clock)
    resolver("a:1")
    clock.now += 6
    resolver("b:1")
    clock.now += 5  # a:1 is stale, b:1 is not
    resolver("a:1")
    resolver("b:1")
    assert resolver.calls == ["a:1", "b:1", "a:1"]


def test_expiry_counts_from_when_the_lookup_started() -> None:
    clock = FakeClock()

    class Slow(CountingResolver):
        def _resolve(self, tag: str) -> str:
            clock.now += 30  # the runtime took 30 s to answer
            return super()._resolve(tag)

    resolver = Slow({"img:1": "d"}, ttl=60.0, clock=clock)
    resolver("img:1")
    clock.now += 30  # 60 s after asking, 30 s after the answer
    resolver("img:1")
    assert resolver.calls == ["img:1", "img:1"]


def test_failures_are_not_memoised() -> None:
    resolver = CountingResolver({"img:1": "d"}, ttl=60.0, clock=FakeClock())
    resolver.fail_next = ContainerRuntimeUnavailableError("daemon down")
    with pytest.raises(ContainerRuntimeUnavailableError, match="daemon down"):
        resolver("img:1")
    assert resolver("img:1") == "d"
    assert resolver.calls == ["img:1", "img:1"]


def test_invalidate_one_tag_or_all() -> None:
    resolver = CountingResolver({"a:1": "x", "b:1": "y"}, ttl=60.0, clock=FakeClock())
    resolver("a:1")
    resolver("b:1")
    resolver.invalidate("a:1")
    resolver("a:1")
    resolver("b:1")
    assert resolver.calls == ["a:1", "b:1", "a:1"]
    resolver.invalidate()
    resolver("a:1")
    resolver("b:1")
    assert resolver.calls == ["a:1", "b:1", "a:1", "a:1", "b:1"]
    resolver.invalidate("never-seen:1")  # no error


@pytest.mark.parametrize("ttl", [-1.0, float("nan"), float("inf")])
def test_bad_ttl_value_is_rejected(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a finite number"):
        CountingResolver({}, ttl=ttl)


@pytest.mark.parametrize("ttl", ["60", None, True])
def test_bad_ttl_type_is_rejected(ttl: object) -> None:
    with pytest.raises(TypeError, match="ttl must be a number"):
        CountingResolver({}, ttl=ttl)


@pytest.mark.parametrize("tag", ["", "   ", None, 3])
def test_bad_tag_is_rejected_before_asking_the_runtime(tag: object) -> None:
    resolver = CountingResolver({}, ttl=60.0)
    with pytest.raises(ValueError, match="image tag must be a non-empty string"):
        resolver(tag)  # type: ignore[arg-type]
    assert resolver.calls == []


def test_concurrent_callers_of_one_tag_share_one_lookup() -> None:
    resolver = CountingResolver({"img:1": "d"}, ttl=60.0)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(resolver("img:1"))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["d"] * 8
    assert resolver.calls == ["img:1"]


def test_different_tags_resolve_in_parallel() -> None:
    # a:1 can only finish once b:1's lookup has started: a resolver that
    # serialised all lookups would time out here instead.
    b_started = threading.Event()
    outcome: dict[str, object] = {}

    class Gated(CountingResolver):
        def _resolve(self, tag: str) -> str:
            if tag == "a:1":
                if not b_started.wait(timeout=20):
                    raise AssertionError("b:1 never started while a:1 was running")
            else:
                b_started.set()
            return super()._resolve(tag)

    resolver = Gated({"a:1": "x", "b:1": "y"}, ttl=60.0)

    def run(tag: str) -> None:
        try:
            outcome[tag] = resolver(tag)
        except AssertionError as exc:
            outcome[tag] = exc

    ta = threading.Thread(target=run, args=("a:1",))
    ta.start()
    tb = threading.Thread(target=run, args=("b:1",))
    tb.start()
    ta.join()
    tb.join()
    assert outcome == {"a:1": "x", "b:1": "y"}


def test_module_level_resolvers_use_the_default_ttl() -> None:
    assert isinstance(docker_digest_resolver, DockerDigestResolver)
    assert isinstance(podman_digest_resolver, PodmanDigestResolver)
    assert isinstance(singularity_digest_resolver, SingularityDigestResolver)
    for resolver in (
        docker_digest_resolver,
        podman_digest_resolver,
        singularity_digest_resolver,
    ):
        assert resolver.ttl == DEFAULT_TTL == 60.0


# ----------------------------------------------------------------------- errors


def test_image_not_found_is_a_lookup_error_naming_tag_and_fetch_command() -> None:
    err = ImageNotFoundError("repo/img:2", "docker", "docker pull repo/img:2")
    assert isinstance(err, LookupError)
    assert isinstance(err, DigestResolutionError)
    assert "'repo/img:2'" in str(err)
    assert "docker pull repo/img:2" in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.tag, copy.runtime, copy.fetch_command) == (
        "repo/img:2",
        "docker",
        "docker pull repo/img:2",
    )
    assert str(copy) == str(err)
    detailed = ImageNotFoundError("t:1", "apptainer", "apptainer pull ...", "no SIF")
    assert "(no SIF)" in str(detailed)
    assert str(pickle.loads(pickle.dumps(detailed))) == str(detailed)


# ------------------------------------------------------- docker (no daemon needed)


def test_docker_unreachable_daemon_is_a_clear_error(tmp_path: Path) -> None:
    socket = tmp_path / "no-daemon.sock"
    resolver = DockerDigestResolver(ttl=0, base_url=f"unix://{socket}")
    with pytest.raises(ContainerRuntimeUnavailableError) as info:
        resolver("busybox:1")
    message = str(info.value)
    assert str(socket) in message
    assert "'busybox:1'" in message
    assert "docker info" in message
    # The next call tries again instead of reusing a broken client.
    with pytest.raises(ContainerRuntimeUnavailableError):
        resolver("busybox:1")


def test_docker_unreachable_tcp_daemon_is_a_clear_error() -> None:
    # Port 9 (discard) on loopback: nothing listens there in the sandbox.
    resolver = DockerDigestResolver(ttl=0, base_url="tcp://127.0.0.1:9", timeout=5)
    with pytest.raises(
        ContainerRuntimeUnavailableError, match=re.escape("tcp://127.0.0.1:9")
    ):
        resolver("busybox:1")


def test_docker_without_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(ImportError, match=r"styxcache\[docker\]"):
        DockerDigestResolver(ttl=0)("busybox:1")


def test_docker_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        DockerDigestResolver(timeout=0)


# ----------------------------------------------------------------------- podman


def _rootfs_tar(marker: str) -> bytes:
    """A one-file image rootfs; the marker makes each image's content distinct."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def podman_store(tmp_path: Path) -> Iterator[list[str]]:
    """Global podman options selecting a private, throwaway image store."""
    require(shutil.which("podman") is not None, "podman is not installed")
    # Podman refuses a runroot longer than 50 characters, and pytest's
    # tmp_path is longer, so the runroot gets its own short folder.
    runroot = tempfile.mkdtemp(prefix="styxcache-podman-", dir="/tmp")
    try:
        yield [
            "--root",
            str(tmp_path / "podman-root"),
            "--runroot",
            runroot,
            "--storage-driver",
            "vfs",  # plain directories: nothing to unmount afterwards
        ]
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def _podman_import(store: list[str], marker: str, tag: str) -> str:
    done = subprocess.run(
        ["podman", *store, "import", "-", tag],
        input=_rootfs_tar(marker),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip().splitlines()[-1]


def test_podman_resolves_the_image_id(podman_store: list[str]) -> None:
    image_id = _podman_import(podman_store, "one", "localhost/styxcache-t/img:1")
    resolver = PodmanDigestResolver(ttl=0, podman_args=podman_store)
    assert image_id.startswith("sha256:")
    assert resolver("localhost/styxcache-t/img:1") == image_id
    # Short names resolve like podman itself resolves them.
    assert resolver("styxcache-t/img:1") == image_id


def test_podman_invalid_reference_is_not_reported_as_missing(
    podman_store: list[str],
) -> None:
    resolver = PodmanDigestResolver(ttl=0, podman_args=podman_store)
    with pytest.raises(DigestResolutionError, match="invalid reference format") as info:
        resolver("Bad::Ref")
    assert not isinstance(info.value, ImageNotFoundError)


def test_podman_unreachable_service_is_a_clear_error(tmp_path: Path) -> None:
    require(shutil.which("podman") is not None, "podman is not installed")
    socket = tmp_path / "no-podman.sock"
    resolver = PodmanDigestResolver(
        ttl=0, podman_args=["--remote", "--url", f"unix://{socket}"]
    )
    with pytest.raises(ContainerRuntimeUnavailableError, match="could not reach"):
        resolver("busybox:1")


def test_podman_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    resolver = PodmanDigestResolver(ttl=0, executable=str(tmp_path / "no-podman"))
    with pytest.raises(ContainerRuntimeUnavailableError, match="not found on PATH"):
        resolver("busybox:1")


def test_podman_args_must_be_a_sequence_not_a_string() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        PodmanDigestResolver(podman_args="--remote")


# A real podman never prints these; small stand-in executables check that the
# parser refuses them instead of returning a bogus identity.


def _fake_podman(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "fake-podman"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo not-a-digest", "unrecognised image ID"),
        (f"echo {'a' * 64}; echo {'b' * 64}", "expected one image ID"),
        ("exit 0", "expected one image ID"),
        (
            "echo 'Error: disk on fire' >&2; exit 125",
            "exit code 125: Error: disk on fire",
        ),
    ],
)
def test_podman_unusable_answers_are_errors(
    tmp_path: Path, body: str, message: str
) -> None:
    resolver = PodmanDigestResolver(ttl=0, executable=_fake_podman(tmp_path, body))
    with pytest.raises(DigestResolutionError, match=message):
        resolver("img:1")


def test_podman_bare_hex_and_prefixed_ids_are_normalised(tmp_path: Path) -> None:
    digest = "c" * 64
    for body in (f"echo {digest}", f"echo sha256:{digest}"):
        exe = _fake_podman(tmp_path, body)
        assert (
            PodmanDigestResolver(ttl=0, executable=exe)("img:1") == f"sha256:{digest}"
        )


def test_podman_passes_the_tag_after_double_dash(tmp_path: Path) -> None:
    # The tag must never be parsed as an option, whatever it looks like.
    exe = _fake_podman(
        tmp_path, f'printf "%s\\n" "$@" > {tmp_path}/argv; echo {"d" * 64}'
    )
    PodmanDigestResolver(ttl=0, executable=exe, podman_args=["--root", "/x"])("-v")
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == [
        "--root",
        "/x",
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "--",
        "-v",
    ]


def test_podman_hanging_cli_times_out(tmp_path: Path) -> None:
    exe = _fake_podman(tmp_path, "exec tail -f /dev/null")
    resolver = PodmanDigestResolver(ttl=0, executable=exe, timeout=0.5)
    with pytest.raises(ContainerRuntimeUnavailableError, match="did not answer"):
        resolver("img:1")


# ------------------------------------------------------------ apptainer/singularity


def _b3(path: Path) -> str:
    return "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


def test_sif_mapped_by_tag_is_hashed(tmp_path: Path) -> None:
    sif = tmp_path / "mrtrix.sif"
    sif.write_bytes(b"SIF image bytes" * 1000)
    resolver = SingularityDigestResolver({"mrtrix3/mrtrix3:3.0.4": sif}, ttl=0)
    assert resolver("mrtrix3/mrtrix3:3.0.4") == _b3(sif)


def test_sif_path_tag_is_hashed_directly(tmp_path: Path) -> None:
    sif = tmp_path / "tool.sif"
    sif.write_bytes(b"abc")
    assert SingularityDigestResolver(ttl=0)(str(sif)) == _b3(sif)


def test_sif_live_mapping_sees_new_entries(tmp_path: Path) -> None:
    images: dict[str, str] = {}
    resolver = SingularityDigestResolver(images, ttl=0)
    with pytest.raises(ImageNotFoundError):
        resolver("t:1")
    sif = tmp_path / "t.sif"
    sif.write_bytes(b"x")
    images["t:1"] = str(sif)
    assert resolver("t:1") == _b3(sif)


def test_sif_yaml_map_paths_are_relative_to_the_map(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    sif = tmp_path / "images" / "fsl.sif"
    sif.write_bytes(b"fsl")
    mapping = tmp_path / "containers.yaml"
    mapping.write_text("brainlife/fsl:6.0.4: images/fsl.sif\n")
    resolver = SingularityDigestResolver(mapping, ttl=0)
    assert resolver("brainlife/fsl:6.0.4") == _b3(sif)


def test_sif_yaml_map_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sif = tmp_path / "ants.sif"
    sif.write_bytes(b"ants")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(f"antsx/ants:2.5: {sif}\n")
    monkeypatch.setenv(IMAGES_ENV, str(mapping))
    assert SingularityDigestResolver(ttl=0)("antsx/ants:2.5") == _b3(sif)


def test_sif_unmapped_tag_names_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        SingularityDigestResolver({}, ttl=0)("mrtrix3/mrtrix3:3.0.4")
    message = str(info.value)
    assert "'mrtrix3/mrtrix3:3.0.4'" in message
    assert "apptainer pull mrtrix3_3.0.4.sif docker://mrtrix3/mrtrix3:3.0.4" in message


def test_sif_mapped_to_missing_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "gone.sif"
    resolver = SingularityDigestResolver({"t:1": missing}, ttl=0)
    with pytest.raises(ImageNotFoundError, match="which is not a file") as info:
        resolver("t:1")
    assert f"apptainer pull {missing} docker://t:1" in str(info.value)


def test_sif_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError):
        SingularityDigestResolver({"t:1": tmp_path}, ttl=0)("t:1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("t:1: 3\n", "must be a YAML mapping"),
    ],
)
def test_sif_bad_yaml_map_is_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text(text)
    with pytest.raises(DigestResolutionError, match=message):
        SingularityDigestResolver(mapping, ttl=0)("t:1")


def test_sif_missing_yaml_map_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DigestResolutionError, match="cannot read SIF image map"):
        SingularityDigestResolver(tmp_path / "nope.yaml", ttl=0)("t:1")


def test_sif_read_error_is_a_clear_error() -> None:
    # /proc/self/mem is a regular file that cannot be read sequentially, which
    # gives a real read error even as root (who can read any plain file).
    proc_mem = Path("/proc/self/mem")
    require(proc_mem.is_file(), "needs Linux /proc")
    with pytest.raises(DigestResolutionError, match="cannot read SIF"):
        SingularityDigestResolver({"t:1": proc_mem}, ttl=0)("t:1")


def test_sif_images_of_wrong_type_are_rejected() -> None:
    with pytest.raises(TypeError, match="mapping or a YAML file path"):
        SingularityDigestResolver(["t:1"])  # type: ignore[arg-type]


# ------------------------------------------------------------ pickling and repr
# Policies are shipped to worker processes (process pools, dask), so a
# resolver must survive pickling; its locks and memo are rebuilt on arrival.


def test_pickled_resolver_keeps_settings_and_drops_the_memo() -> None:
    resolver = CountingResolver({"img:1": "d"}, ttl=30.0, clock=FakeClock())
    resolver("img:1")
    copy = pickle.loads(pickle.dumps(resolver))
    assert copy.ttl == 30.0
    assert copy("img:1") == "d"
    assert copy.calls == ["img:1", "img:1"]  # asked again: the memo stayed behind


def test_pickled_docker_resolver_keeps_its_daemon_address(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock"
    copy = pickle.loads(pickle.dumps(DockerDigestResolver(ttl=5.0, base_url=url)))
    assert (copy.ttl, copy.base_url) == (5.0, url)
    assert repr(copy) == f"DockerDigestResolver(ttl=5.0, base_url={url!r})"
    with pytest.raises(ContainerRuntimeUnavailableError, match=re.escape(url)):
        copy("busybox:1")


def test_pickled_podman_resolver_still_resolves(podman_store: list[str]) -> None:
    image_id = _podman_import(podman_store, "pickled", "localhost/styxcache-t/p:1")
    resolver = PodmanDigestResolver(ttl=60.0, podman_args=podman_store)
    resolver("localhost/styxcache-t/p:1")
    copy = pickle.loads(pickle.dumps(resolver))
    assert copy("localhost/styxcache-t/p:1") == image_id
    assert "podman_args=['--root'" in repr(copy)


def test_pickled_sif_resolver_still_resolves(tmp_path: Path) -> None:
    sif = tmp_path / "t.sif"
    sif.write_bytes(b"sif")
    resolver = SingularityDigestResolver({"t:1": str(sif)}, ttl=60.0)
    resolver("t:1")
    copy = pickle.loads(pickle.dumps(resolver))
    assert copy("t:1") == _b3(sif)
    assert repr(copy) == "SingularityDigestResolver(images=mapping, ttl=60.0)"
