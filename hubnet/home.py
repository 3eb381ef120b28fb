"""Where a node keeps its files.

With `--home DIR` or `HUBNET_HOME`, everything lives in that one folder, so many
nodes can share a machine. Otherwise configuration goes to the platform's config
folder and the key and known hosts to its data folder (platformdirs).
"""

from __future__ import annotations

import os
from pathlib import Path

from hubnet.identity.frozen import frozen


@frozen
class Home:
    config_dir: Path
    data_dir: Path
    single: bool  # True when one folder holds everything (--home / HUBNET_HOME)

    @classmethod
    def locate(cls, override: str | os.PathLike[str] | None = None) -> Home:
        chosen = override or os.environ.get("HUBNET_HOME")
        if chosen:
            path = Path(chosen).expanduser().absolute()
            return cls(path, path, True)
        import platformdirs  # only here: a call with HUBNET_HOME set never pays for it

        return cls(
            Path(platformdirs.user_config_dir("hubnet")), Path(platformdirs.user_data_dir("hubnet")), False
        )

    @property
    def identity_key(self) -> Path:
        return self.data_dir / "identity.key"

    @property
    def attestations(self) -> Path:
        """The organisation attestations issued to this home's key (`hubnode org join`)."""
        return self.data_dir / "attestations"

    @property
    def known_hosts(self) -> Path:
        return self.data_dir / "known_hosts"

    @property
    def dht_tokens(self) -> Path:
        """The tokens DHT nodes gave this home's last discovery, for its next (`DhtClient`)."""
        return self.data_dir / "dht-tokens"

    @property
    def offers(self) -> Path:
        """The offers a discovery found, one file per service and bootstrap list, for the
        next calls of it (`hubnet.offer_cache`)."""
        return self.data_dir / "offers"

    @property
    def serving(self) -> Path:
        """PEER_ID@HOST:PORT of the node serving from this home, while it runs (`hubnode status`)."""
        return self.data_dir / "serving"

    @property
    def services(self) -> Path:
        return self.config_dir / "services.toml"

    @property
    def client(self) -> Path:
        return self.config_dir / "client.toml"

    @property
    def aliases(self) -> Path:
        return self.config_dir / "aliases.toml"

    @property
    def bin_dir(self) -> Path:
        """Where `hubnode alias` puts its commands by default."""
        return self.config_dir / "bin" if self.single else Path.home() / ".local" / "bin"
