"""The text of every file the local cluster generates (supervisord.conf, nginx.conf, the
Redis and Sentinel configs, prometheus.yml), from a ClusterConfig and the deploy/
templates. Nothing here writes a file; supervision.py does.
"""

import string

from config import DEPLOY, HOST, SERVICE_DIR


class ConfigTemplate(string.Template):
    # nginx and supervisord use "$" and "%" themselves.
    delimiter = "@"


def render(template_path, **values):
    return ConfigTemplate(template_path.read_text()).substitute(**values)


def supervisor_environment(environment):
    """An environment as supervisord's `environment=` value."""
    # supervisord reads "%" as the start of an expansion.
    return ",".join(
        f'{key}="{value.replace("%", "%%")}"' for key, value in sorted(environment.items())
    )


def nginx_upstream_servers(config):
    return "\n".join(
        # max_fails=0: a refused connect (a replica restarting or dead) still moves
        # on to the next replica, but does not bar the replica for fail_timeout: a
        # WebSocket never ends the bar, so a drained replica, once back, got almost
        # no new connections while the others were drained in turn.
        f"        server {config.network.address(name)}:{port} max_fails=0;"
        for name, port in config.replica_ports.items()
    )


def rendered_files(config, programs, secret_key, run_as_root):
    """The text of every generated file, by its name in the run directory."""
    values = dict(
        run_dir=config.run_dir,
        log_dir=config.log_dir,
        host=HOST,
        lb_port=config.lb_port,
        redis_port=config.redis_port,
        prometheus_port=config.prometheus_port,
        deploy_dir=DEPLOY,
    )
    replica_programs = "".join(
        render(
            DEPLOY / "local" / "replica.conf.template",
            name=name,
            port=port,
            host=config.network.address(name),
            netns_exec=config.network.exec_prefix(programs.ip, name),
            python=programs.python,
            service_dir=SERVICE_DIR,
            log_dir=config.log_dir,
            environment=supervisor_environment(config.replica_environment(name, secret_key)),
            stop_wait_seconds=config.stop_wait_seconds,
        )
        for name, port in config.replica_ports.items()
    )
    layout = config.redis_layout
    redis_programs = "".join(
        render(
            DEPLOY / "local" / f"{template}-program.conf.template",
            name=name,
            netns_exec=config.network.exec_prefix(programs.ip, name),
            redis_server=programs.redis_server,
            run_dir=config.run_dir,
            log_dir=config.log_dir,
            autorestart=str(layout.restarts_servers).lower(),
        )
        for template, names in (("redis", config.redis_ports), ("sentinel", config.sentinel_ports))
        for name in names
    ) + relay_programs(config, programs)
    redis_files = {
        f"{server.name}.conf": render(
            DEPLOY / "redis" / "redis.conf.template",
            redis_maxmemory=config.redis_maxmemory,
            redis_maxmemory_policy=config.redis_maxmemory_policy,
            redis_dir=config.run_dir / server.name,
            server_options=layout.server_options(server),
            **{**values, "redis_port": server.port, "host": config.network.redis_bind(server.name)},
        )
        + config.network.redis_conf()
        for server in layout.servers
    }
    # Each Sentinel's first config; it runs on a copy (Supervisor.start).
    redis_files.update(
        {
            f"{name}.conf": render(
                DEPLOY / "redis" / "sentinel.conf.template",
                port=port,
                sentinel_dir=config.run_dir / name,
                monitors=layout.sentinel_monitors(),
                host=HOST,
            )
            for name, port in config.sentinel_ports.items()
        }
    )
    return {
        "supervisord.conf": render(
            DEPLOY / "local" / "supervisord.conf.template",
            nginx=programs.nginx,
            prometheus=programs.prometheus,
            replica_names=",".join(config.replica_ports),
            replica_programs=replica_programs,
            redis_programs=redis_programs,
            **values,
        ),
        "nginx.conf": render(
            DEPLOY / "nginx" / "nginx.conf.template",
            upstream_servers=nginx_upstream_servers(config),
            # Workers of a root master would otherwise run as nobody.
            user_directive="user root;" if run_as_root else "",
            ws_connections_per_address=config.ws_connections_per_address,
            ws_handshakes_per_second=config.ws_handshakes_per_second,
            ws_handshake_burst=config.ws_handshake_burst,
            **values,
        ),
        **redis_files,
        "prometheus.yml": render(
            DEPLOY / "prometheus" / "prometheus.local.yml.template",
            metrics_path=config.metrics_path,
            alert_rules=DEPLOY / "prometheus" / "alerts.yml",
            replica_targets=", ".join(
                f'"{config.network.address(name)}:{port}"'
                for name, port in config.replica_ports.items()
            ),
            **values,
        ),
    }


def relay_programs(config, programs):
    """CLUSTER_REDIS_DELAY_MS: a delaying relay in each Redis shard's namespace (relay.py)."""
    if not config.network.delay_ms:
        return ""
    return "".join(
        render(
            DEPLOY / "local" / "relay-program.conf.template",
            name=config.network.relay_name(name),
            netns_exec=config.network.exec_prefix(programs.ip, name),
            python=programs.python,
            relay=DEPLOY / "local" / "relay.py",
            listen=f"{config.network.address(name)}:{port}",
            upstream=f"{config.network.redis_bind(name)}:{port}",
            delay_ms=config.network.delay_ms,
            log_dir=config.log_dir,
        )
        for name, port in config.redis_ports.items()
    )
