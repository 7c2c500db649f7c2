#!/bin/sh
# Temporal's two PostgreSQL databases: created and set up on the first start, upgraded in place on later
# starts (a new temporalio/admin-tools image brings new versioned schema files). Run by the one-shot
# "temporal-schema" service of compose.yaml; temporal-sql-tool reads the password from SQL_PASSWORD.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12

sql() {
  temporal-sql-tool --plugin "${DB:-postgres12}" --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" -u "$POSTGRES_USER" "$@"
}

for pair in temporal:temporal temporal_visibility:visibility; do
  database=${pair%%:*}
  versioned="$SCHEMA_DIR/${pair#*:}/versioned"
  if sql --db "$database" update-schema -d "$versioned"; then
    echo "$database: schema is current"
    continue
  fi
  echo "$database: no schema yet; creating the database and its schema"
  sql --db "$database" create || echo "$database: database exists"
  sql --db "$database" setup-schema -v 0.0
  sql --db "$database" update-schema -d "$versioned"
done
