"""Test harness for valkey-backup's integration tests: real servers on loopback.

Modules:
- components: paths of the installed servers (from `scripts/setup.sh`'s components.env);
- process: process groups, log files, polling with deadlines, free ports, argv scans;
- servers: ValkeyServer (valkey8/valkey9/redis7), MotoServer (optionally with IAM auth),
  GarageServer (single node);
- dataset: deterministic multi-type datasets and fingerprints to compare servers;
- agent: the real agent binary, over its socket protocol and as a CLI;
- tls: a throw-away CA and server certificate (moto over HTTPS);
- topology: three Valkey 9.1 units shaped like Canonical's valkey charm, with Sentinels
  and a TLS terminator.
"""

from .agent import Agent, AgentError, AgentProtocolError, AgentResponse, agent_binary
from .components import SERVER_KINDS, Components, load_components
from .dataset import (
    DatasetInfo,
    Fingerprint,
    assert_same_dataset,
    dataset_fingerprint,
    fingerprint_diff,
    load_dataset,
)
from .process import (
    ArgvSampler,
    ManagedProcess,
    StartupError,
    all_process_argv,
    argv_containing,
    free_port,
    port_accepts,
    wait_until,
)
from .servers import (
    GarageServer,
    MotoRequest,
    MotoServer,
    S3Credentials,
    ValkeyServer,
    configure_params,
    s3_params,
    start_from_rdb,
    unique_bucket_name,
)
from .tls import CertAuthority, make_test_ca

__all__ = [
    "SERVER_KINDS",
    "Agent",
    "AgentError",
    "AgentProtocolError",
    "AgentResponse",
    "ArgvSampler",
    "CertAuthority",
    "Components",
    "DatasetInfo",
    "Fingerprint",
    "GarageServer",
    "ManagedProcess",
    "MotoRequest",
    "MotoServer",
    "S3Credentials",
    "StartupError",
    "ValkeyServer",
    "agent_binary",
    "all_process_argv",
    "argv_containing",
    "assert_same_dataset",
    "configure_params",
    "dataset_fingerprint",
    "fingerprint_diff",
    "free_port",
    "load_components",
    "load_dataset",
    "make_test_ca",
    "port_accepts",
    "s3_params",
    "start_from_rdb",
    "unique_bucket_name",
    "wait_until",
]
