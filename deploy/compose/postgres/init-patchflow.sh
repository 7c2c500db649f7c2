#!/bin/sh
# patchflow's own role and database (its history database) on the compose stack's PostgreSQL. The postgres
# image runs /docker-entrypoint-initdb.d/ scripts on the data volume's first start only; later password
# changes are made with ALTER ROLE.
set -eu
: "${POSTGRES_PATCHFLOW_PASSWORD:?set POSTGRES_PATCHFLOW_PASSWORD in deploy/compose/.env}"
psql -v ON_ERROR_STOP=1 -v pw="$POSTGRES_PATCHFLOW_PASSWORD" --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE ROLE patchflow LOGIN PASSWORD :'pw';
CREATE DATABASE patchflow OWNER patchflow;
SQL
