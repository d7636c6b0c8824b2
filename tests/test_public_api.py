"""The public API: `styxcache.__all__` is exactly what the package exports.

Like httpx's test of its `__all__`: a name bound in `styxcache` but missing
from `__all__` is an accidental export, and a name in `__all__` that does not
import is a broken promise. The README's and docs' examples import only
exported names, and every error the package defines has one root.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

import styxcache
from conftest import require
from styxcache.errors import StyxcacheError

ROOT = Path(__file__).resolve().parents[1]


def _bound_public_names(module: types.ModuleType) -> set[str]:
    """Names a module binds that look public: not private, not a submodule."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }


def test_all_matches_the_public_names_bound() -> None:
    # The names are bound on first use (PEP 562): bind them all, then compare.
    for name in styxcache.__all__:
        getattr(styxcache, name)
    assert set(styxcache.__all__) == _bound_public_names(styxcache)


def test_dir_lists_every_exported_name() -> None:
    assert set(styxcache.__all__) <= set(dir(styxcache))


def test_importing_the_package_imports_nothing_else() -> None:
    # `styxcache ls` imports the package first: it must not pay for the runner.
    code = (
        "import sys, styxcache; "
        "print(sorted(m for m in sys.modules if m.startswith('styxcache')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['styxcache']"


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = styxcache.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from styxcache import no_such_name", {})


def test_submodules_stay_reachable_as_attributes() -> None:
    # `import styxcache; styxcache.store.CacheStore` worked when the package
    # imported everything at once.
    assert styxcache.store.CacheStore is styxcache.CacheStore


def test_all_is_sorted_and_unique() -> None:
    assert list(styxcache.__all__) == sorted(set(styxcache.__all__))


@pytest.mark.parametrize("name", styxcache.__all__)
def test_each_exported_name_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from styxcache import {name}", namespace)
    assert namespace[name] is getattr(styxcache, name)


def test_internals_are_not_exported() -> None:
    # Records of the lease machinery are not something a user builds or reads.
    assert "LeaseOwner" not in styxcache.__all__
    assert "LeaseOwner" not in dir(styxcache)


def test_a_formerly_exported_internal_still_imports_with_a_warning() -> None:
    from styxcache.lease import LeaseOwner

    with pytest.warns(DeprecationWarning, match=r"import it from styxcache\.lease"):
        assert styxcache.LeaseOwner is LeaseOwner  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="LeaseOwner"):
        exec("from styxcache import LeaseOwner", {})


def _doc_imports() -> set[str]:
    """Every name the README, the docs and the examples import from `styxcache`."""
    names: set[str] = set()
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += sorted((ROOT / "examples").rglob("*.py"))
    pattern = re.compile(r"^\s*from styxcache import (\([^)]*\)|[^\n]+)", re.M)
    for path in files:
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            text = match.group(1).strip("()")
            for part in text.replace("\n", ",").split(","):
                name = part.split("#")[0].strip().split(" as ")[0].strip()
                if name:
                    names.add(name)
    return names


def test_documented_imports_are_exported() -> None:
    names = _doc_imports()
    assert names, "the docs show no `from styxcache import ...` at all?"
    assert names <= set(styxcache.__all__), sorted(names - set(styxcache.__all__))


def _package_modules() -> list[str]:
    found = []
    for info in pkgutil.walk_packages(styxcache.__path__, "styxcache."):
        found.append(info.name)
    return found


def _defined_exceptions() -> dict[str, type[BaseException]]:
    """Exception classes defined in styxcache's source (read with ast, then imported).

    Reading the source finds the classes of modules that need an optional
    client (nats, psycopg, dask) too, without importing those clients.
    """
    found: dict[str, type[BaseException]] = {}
    src = ROOT / "src"
    for path in sorted((src / "styxcache").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(src).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                re.search(r"(Error|Exception)s?$", ast.unparse(base))
                for base in node.bases
            ):
                try:
                    loaded = importlib.import_module(module)
                except ImportError as exc:  # an optional client is missing
                    pytest.skip(f"{module} does not import here: {exc}")
                cls = getattr(loaded, node.name)
                found[f"{module}.{node.name}"] = cls
    return found


def test_every_error_has_the_one_root() -> None:
    errors = _defined_exceptions()
    assert len(errors) > 20
    strays = [
        name for name, cls in errors.items() if not issubclass(cls, StyxcacheError)
    ]
    assert strays == []


def test_errors_live_in_one_module() -> None:
    # The demo's own error sits with the demo, which is not part of the library.
    homes = {
        name
        for name, cls in _defined_exceptions().items()
        if not name.startswith("styxcache.errors.")
        and cls.__module__ != "styxcache.errors"
    }
    assert homes == {"styxcache.demo.mrtrix.MrtrixUnavailableError"}


def test_errors_keep_their_builtin_bases() -> None:
    # `except ValueError` / `except OSError` written against older releases still work.
    from styxcache import errors

    expected = {
        "CacheDirectoryError": OSError,
        "CacheReadOnlyError": PermissionError,
        "UnsafeCacheFolderError": PermissionError,
        "UntrustedEntryError": RuntimeError,
        "ManifestError": ValueError,
        "KeyPrefixError": LookupError,
        "TransferError": ValueError,
        "ParamEncodingError": TypeError,
        "UnkeyableInputError": ValueError,
        "DigestResolutionError": RuntimeError,
        "ImageNotFoundError": LookupError,
        "RemoteConfigError": ValueError,
        "DamagedEntryError": ValueError,
        "ConfigError": ValueError,
        "TriggerError": ValueError,
        "RunnerSpecError": ValueError,
        "PublishConfigError": ValueError,
        "NatsSettingsError": ValueError,
        "LedgerError": RuntimeError,
        "StoreUnavailableError": RuntimeError,
        "RunLostError": RuntimeError,
        "UnsafeCacheFileError": PermissionError,
        "WireError": ValueError,
        "BadMessageError": ValueError,
    }
    for name, base in expected.items():
        cls = getattr(errors, name)
        assert issubclass(cls, base), name
        assert issubclass(cls, StyxcacheError), name


def test_old_import_paths_of_errors_still_work() -> None:
    from styxcache import errors

    old_homes = {
        "styxcache.runner": "CacheDirectoryError",
        "styxcache.execution": "CacheReadOnlyError",
        "styxcache.store": "UnsafeCacheFolderError",
        "styxcache.trust": "UntrustedEntryError",
        "styxcache.manifest": "ManifestError",
        "styxcache.hashing": "UnkeyableInputError",
        "styxcache.canonical": "ParamEncodingError",
        "styxcache.backends": "DigestResolutionError",
        "styxcache.backends.errors": "ImageNotFoundError",
        "styxcache.remote": "RemoteError",
        "styxcache.transfer": "TransferError",
        "styxcache.inventory": "KeyPrefixError",
    }
    for module, name in old_homes.items():
        assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_errors_survive_a_process_pool() -> None:
    # Executors send a run's exception back through pickle.
    import pickle

    from styxcache import errors

    samples: list[BaseException] = [
        errors.RunnerSpecError("bad base", "runner.base"),
        errors.NatsSettingsError("bad url", "nats.url"),
        errors.RemoteError("timed out", "TimeoutError"),
        errors.BadMessageError("stale", "sent 2 h ago"),
        errors.ImageNotFoundError("busybox:1", "docker", "docker pull busybox:1"),
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)


def test_the_root_is_exported_and_documented() -> None:
    assert styxcache.StyxcacheError is StyxcacheError
    assert inspect.getdoc(StyxcacheError)


# Foreign errors are mapped where they would leave the public API ---------------


def test_a_yaml_error_in_a_schedule_file_is_a_config_error(tmp_path: Path) -> None:
    from styxcache.scheduler import ConfigError, load_config

    path = tmp_path / "jobs.yaml"
    path.write_text("schedules:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert isinstance(caught.value, StyxcacheError)
    assert "yaml" not in type(caught.value).__module__


def test_a_yaml_error_in_a_sif_image_map_is_a_resolution_error(tmp_path: Path) -> None:
    from styxcache.backends import DigestResolutionError, SingularityDigestResolver

    images = tmp_path / "images.yaml"
    images.write_text("tag: [unclosed\n")
    resolver = SingularityDigestResolver(images=str(images), ttl=0)
    with pytest.raises(DigestResolutionError) as caught:
        resolver("lab/tool:1")
    assert isinstance(caught.value, StyxcacheError)


def test_an_unusable_remote_url_is_a_remote_config_error() -> None:
    from styxcache import RemoteConfigError, RemoteTier

    with pytest.raises(RemoteConfigError) as caught:
        RemoteTier("ftp://example.invalid/bucket")
    assert isinstance(caught.value, StyxcacheError)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_database_is_store_unavailable() -> None:
    require(importlib.util.find_spec("psycopg") is not None, "psycopg")
    from styxcache.scheduler.stores import StoreUnavailableError, open_store

    url = f"postgresql://user:s3cret-pw@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(StoreUnavailableError) as caught:
        store = open_store(url)
        store.close()
    assert isinstance(caught.value, StyxcacheError)
    assert "s3cret-pw" not in str(caught.value)
