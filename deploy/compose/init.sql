-- The compose example's target: database shop, a read-only role and a control role.
CREATE ROLE shop_ro LOGIN PASSWORD 'example-ro-password';
CREATE ROLE pgwarden_control LOGIN PASSWORD 'example-control-password';
GRANT pg_signal_backend TO pgwarden_control;
CREATE DATABASE shop;
\connect shop
CREATE TABLE orders (id int PRIMARY KEY, total numeric(10, 2) NOT NULL);
INSERT INTO orders SELECT n, n * 7.25 FROM generate_series(1, 100) AS n;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea) FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shop_ro;

-- The state store of the two-replica example (`--profile ha`): its own role, database, schema.
\connect postgres
CREATE ROLE pgwarden_state LOGIN PASSWORD 'example-state-password';
CREATE DATABASE pgwarden_state;
\connect pgwarden_state
CREATE SCHEMA pgwarden AUTHORIZATION pgwarden_state;
