from ops import testing
from fakes import full_state


def test_smoke(ctx, agent, systemd, paths):
    out = ctx.run(ctx.on.install(), full_state())
    print(agent.calls)
    print(systemd.argvs)
    print(out.unit_status)
    print(ctx.juju_log)
    assert 0
