#!/usr/bin/env bash
# Makes sure the services the integration tests talk to are up on 127.0.0.1:
# PostgreSQL 5432, MariaDB 3306, Redis 6379, RabbitMQ 5672. A service that is
# down is started with the machine's own start command; one that still does
# not answer fails this script under CI=true (the tests would fail anyway,
# with less helpful messages) and is only reported elsewhere.
set -uo pipefail

up() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

start() {
  case "$1" in
    postgresql) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start ;;
    mariadb) start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd ;;
    redis) redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
             --dir /var/lib/redis --logfile /var/log/redis/ci.log ;;
    rabbitmq) rabbitmq-server -detached ;;
  esac
}

missing=()
for service in postgresql:5432 mariadb:3306 redis:6379 rabbitmq:5672; do
  name=${service%%:*} port=${service##*:}
  if up "$port"; then continue; fi
  echo "services: $name is down on port $port; starting it"
  start "$name" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do up "$port" && break; sleep 1; done
  if up "$port"; then echo "services: $name is up"; else missing+=("$name:$port"); fi
done

if ((${#missing[@]})); then
  echo "services: not reachable: ${missing[*]}" >&2
  [[ "${CI:-}" == "true" ]] && exit 1
fi
exit 0
