"""``privedge broker``: run a local mosquitto and manage the hardened broker's users and certificates.

  privedge broker start --port P --data DIR [--secure] [--tls-port P2 [--require-certificate]]
                                                                         foreground broker
  privedge broker add-device NAME --dir DIR [--prefix P]                 enrol a sensor (prints its password)
  privedge broker add-gateway NAME --dir DIR / add-app NAME --dir DIR    enrol a gateway / a home app
  privedge broker remove NAME --dir DIR                                  withdraw a user
  privedge broker make-certs --dir DIR [--host H ...]                    home CA + server certificate
  privedge broker make-client-cert NAME --dir DIR                        a client certificate (that CA)
  privedge broker render --dir DIR --port P [--tls-port P2 [--require-certificate]]
                                                                         write DIR/mosquitto.conf

A password comes from PRIVEDGE_MQTT_PASSWORD when set, else it is generated and printed once.
"""
from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
from pathlib import Path

from broker.secure import BrokerToolError, add_user, make_certs, make_client_cert, remove_user, render_conf
from schemas.errors import BadName

DEV_CONF = Path(__file__).with_name("mosquitto.dev.conf")
REQUIRE_HELP = "TLS listener: clients must also present a certificate signed by the home CA"


def dev_conf(data: Path, port: int, bind: str = "127.0.0.1") -> Path:
    """Write ``data/mosquitto.conf``: the development config plus listener and persistence location."""
    data = Path(data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "mosquitto.conf"
    conf.write_text(DEV_CONF.read_text() + f"listener {port} {bind}\npersistence_location {data}/\n"
                    f"user {getpass.getuser()}\n")
    return conf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge broker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="run mosquitto in the foreground")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--data", type=Path, required=True, help="persistence directory (secure: broker dir)")
    s.add_argument("--secure", action="store_true", help="hardened config from --data (see render)")
    s.add_argument("--tls-port", type=int, default=None)
    s.add_argument("--require-certificate", action="store_true", help=REQUIRE_HELP)
    for name, help_ in (("add-device", "enrol a sensor"), ("add-gateway", "enrol a gateway"),
                        ("add-app", "enrol a home app (reads results)")):
        a = sub.add_parser(name, help=help_)
        a.add_argument("name")
        a.add_argument("--dir", type=Path, required=True)
        a.add_argument("--prefix", default="privedge")
    r = sub.add_parser("remove", help="withdraw a user")
    r.add_argument("name")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--prefix", default="privedge")
    c = sub.add_parser("make-certs", help="home CA and server certificate")
    c.add_argument("--dir", type=Path, required=True)
    c.add_argument("--host", action="append", default=None, help="DNS name or IP (repeatable)")
    c.add_argument("--days", type=int, default=825)
    k = sub.add_parser("make-client-cert", help="a client certificate signed by the home CA")
    k.add_argument("name")
    k.add_argument("--dir", type=Path, required=True)
    k.add_argument("--days", type=int, default=825)
    g = sub.add_parser("render", help="write the hardened mosquitto.conf")
    g.add_argument("--dir", type=Path, required=True)
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--tls-port", type=int, default=None)
    g.add_argument("--require-certificate", action="store_true", help=REQUIRE_HELP)
    g.add_argument("--bind", default="127.0.0.1")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "start":
            conf = (render_conf(args.data, args.port, tls_port=args.tls_port,
                                require_certificate=args.require_certificate) if args.secure
                    else dev_conf(args.data, args.port))
            binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            if not os.path.exists(binary):
                raise BrokerToolError("mosquitto not found: run scripts/setup.sh")
            print(f"mosquitto on port {args.port}, config {conf}", file=sys.stderr)
            sys.stdout.flush()
            os.execv(binary, [binary, "-c", str(conf)])  # foreground; signals go straight to mosquitto
        elif args.cmd.startswith("add-"):
            role = args.cmd.removeprefix("add-")
            password = add_user(args.dir, args.name, role, os.environ.get("PRIVEDGE_MQTT_PASSWORD"),
                                prefix=args.prefix)
            if not os.environ.get("PRIVEDGE_MQTT_PASSWORD"):
                print(password)
            print(f"enrolled {role} {args.name}; send SIGHUP to a running broker to reload", file=sys.stderr)
        elif args.cmd == "remove":
            remove_user(args.dir, args.name, prefix=args.prefix)
        elif args.cmd == "make-certs":
            print(make_certs(args.dir, tuple(args.host or ("localhost", "127.0.0.1")), days=args.days))
        elif args.cmd == "make-client-cert":
            print(*make_client_cert(args.dir, args.name, days=args.days))
        elif args.cmd == "render":
            print(render_conf(args.dir, args.port, tls_port=args.tls_port, bind=args.bind,
                              require_certificate=args.require_certificate))
    except (BrokerToolError, BadName, OSError) as e:
        print(f"privedge broker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
