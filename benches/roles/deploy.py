# The bench's role for pyinfra: app/tasks.yaml task for task in pyinfra's own operations, with
# the same templates and app/defaults.yaml's values, which the bench's inventory gives as the
# hosts' data `bench_vars`. Run from benches/roles.
from io import StringIO

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.facts.server import Hostname
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

v = host.data.bench_vars
# As Ansible renders templates: a block tag's own line ends with it.
jinja = {"trim_blocks": True}
owned = {"user": "benchapp", "group": "benchapp"}
settings = {"user": "root", "group": "benchapp", "mode": "640"}

server.group(name="service group", group="benchapp", system=True)
# The group as the primary one: pyinfra lists a user's secondary groups without it, so
# `groups=["benchapp"]` would run usermod on every run.
server.user(
    name="service user", user="benchapp", system=True, home="/srv/app", shell="/usr/sbin/nologin",
    group="benchapp", ensure_home=False,
)
files.directory(name="application directory", path="/srv/app", mode="755", **owned)
files.directory(name="configuration directory", path="/srv/app/conf", mode="750", user="root", group="benchapp")
files.directory(name="data directory", path="/srv/app/data", mode="750", **owned)
files.directory(name="log directory", path="/var/log/benchapp", mode="755", **owned)
main = files.put(
    name="main settings", src=StringIO(f"environment = {v['env']}\nlisten = {v['listen_port']}\n"),
    dest="/srv/app/conf/app.conf", **settings,
)
logging = files.put(
    name="logging settings", src=StringIO(f"level = {v['log_level']}\npath = /var/log/benchapp/app.log\n"),
    dest="/srv/app/conf/logging.conf", **settings,
)
files.put(name="worker settings", src=StringIO(f"threads = {v['workers']}\n"), dest="/srv/app/conf/worker.conf", **settings)
upstreams = files.template(
    name="upstreams", src="app/templates/upstreams.conf.j2", dest="/srv/app/conf/upstreams.conf",
    jinja_env_kwargs=jinja, **settings, **v,
)
files.template(
    name="feature flags", src="app/templates/features.conf.j2", dest="/srv/app/conf/features.conf",
    jinja_env_kwargs=jinja, **settings, **v,
)
files.template(
    name="log rotation", src="app/templates/logrotate.j2", dest="/etc/logrotate.d/benchapp", mode="644",
    jinja_env_kwargs=jinja, **v,
)
files.line(name="service environment port", path="/etc/default/benchapp", line="^PORT=.*$", replace=f"PORT={v['listen_port']}")
files.line(name="service environment mode", path="/etc/default/benchapp", line="^MODE=.*$", replace=f"MODE={v['env']}")
files.link(name="current configuration", path="/srv/app/current", target="/srv/app/conf")
apt.packages(name="ssh server", packages=["openssh-server"])
for unit in ("benchapp", "benchapp-worker"):
    written = files.template(
        name=f"{unit} unit", src=f"app/templates/{unit}.service.j2", dest=f"/etc/systemd/system/{unit}.service",
        mode="644", jinja_env_kwargs=jinja, **v,
    )
    systemd.daemon_reload(name=f"{unit} unit loaded", _if=written.did_change)
    systemd.service(name=f"{unit} running", service=f"{unit}.service", running=True, enabled=True)
if host.get_fact(File, path="/srv/app/data/.initialised") is None:
    server.shell(name="first-run setup", commands=["date > /srv/app/data/.initialised"])
files.put(name="banner", src=StringIO(f"{v['env']}: benchapp on {host.get_fact(Hostname)}\n"), dest="/etc/motd", mode="644")
files.directory(name="cache directory", path="/var/cache/benchapp", mode="750", **owned)
# Ansible's handler: once, after the tasks, when a setting it watches changed.
systemd.service(
    name="restart app", service="benchapp.service", restarted=True, _if=any_changed(main, logging, upstreams),
)
