-- A SQLite database written by fhirvault 0.1.0 (commit db0911a): `fhirvault serve` on an empty data dir,
-- then PUT Patient/old, Binary/oldbin (text/plain) and DocumentReference/olddoc; dumped with
-- sqlite3 iterdump, without the clients and token signing keys (a server start makes new ones).
BEGIN TRANSACTION;
CREATE TABLE blob_chunks (
	blob_key VARCHAR(255) NOT NULL, 
	seq INTEGER NOT NULL, 
	data BLOB NOT NULL, 
	PRIMARY KEY (blob_key, seq)
);
CREATE TABLE blobs (
	id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	backend VARCHAR(16) NOT NULL, 
	storage_key VARCHAR(255) NOT NULL, 
	size BIGINT, 
	sha256 VARCHAR(64), 
	sha1 VARCHAR(28), 
	created BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE clients (
	client_id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	secret_hash VARCHAR(300) NOT NULL, 
	scopes TEXT NOT NULL, 
	patient VARCHAR(100), 
	enabled BOOLEAN NOT NULL, 
	created_at BIGINT NOT NULL, 
	last_used_at BIGINT, 
	failed_auth_count INTEGER NOT NULL, 
	failed_auth_since BIGINT, 
	PRIMARY KEY (client_id)
);
CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	subject VARCHAR(160), 
	dedupe_key VARCHAR(512), 
	payload TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	run_after BIGINT NOT NULL, 
	lease_until BIGINT, 
	claim_token VARCHAR(36), 
	last_error TEXT, 
	result TEXT, 
	created_at BIGINT NOT NULL, 
	updated_at BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE resource_versions (
	resource_type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	version_id INTEGER NOT NULL, 
	last_updated BIGINT NOT NULL, 
	method VARCHAR(8) NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content TEXT, 
	blob_id VARCHAR(64), 
	PRIMARY KEY (resource_type, id, version_id)
);
INSERT INTO "resource_versions" VALUES('Patient','old',1,1796026902882874,'PUT',0,'{"resourceType":"Patient","id":"old","active":true,"meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:42.882874+00:00"}}',NULL);
INSERT INTO "resource_versions" VALUES('Binary','oldbin',1,1796026903000319,'PUT',0,'{"resourceType":"Binary","contentType":"text/plain","data":"Ynl0ZXMgb2YgdGhlIHByZXZpb3VzIHJlbGVhc2U=","id":"oldbin","meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:43.000319+00:00"}}',NULL);
INSERT INTO "resource_versions" VALUES('DocumentReference','olddoc',1,1796026903033114,'PUT',0,'{"resourceType":"DocumentReference","id":"olddoc","status":"current","content":[{"attachment":{"contentType":"text/plain","url":"Binary/oldbin","size":29,"hash":"OHolmWBdgcuAX78YLqA115HNBdw="}}],"meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:43.033114+00:00"}}',NULL);
CREATE TABLE resources (
	resource_type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	version_id INTEGER NOT NULL, 
	last_updated BIGINT NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content TEXT, 
	blob_id VARCHAR(64), 
	PRIMARY KEY (resource_type, id)
);
INSERT INTO "resources" VALUES('Patient','old',1,1796026902882874,0,'{"resourceType":"Patient","id":"old","active":true,"meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:42.882874+00:00"}}',NULL);
INSERT INTO "resources" VALUES('Binary','oldbin',1,1796026903000319,0,'{"resourceType":"Binary","contentType":"text/plain","data":"Ynl0ZXMgb2YgdGhlIHByZXZpb3VzIHJlbGVhc2U=","id":"oldbin","meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:43.000319+00:00"}}',NULL);
INSERT INTO "resources" VALUES('DocumentReference','olddoc',1,1796026903033114,0,'{"resourceType":"DocumentReference","id":"olddoc","status":"current","content":[{"attachment":{"contentType":"text/plain","url":"Binary/oldbin","size":29,"hash":"OHolmWBdgcuAX78YLqA115HNBdw="}}],"meta":{"versionId":"1","lastUpdated":"2026-11-30T08:21:43.033114+00:00"}}',NULL);
CREATE TABLE schema_migrations (
	name VARCHAR(128) NOT NULL, 
	applied_at BIGINT NOT NULL, 
	PRIMARY KEY (name)
);
INSERT INTO "schema_migrations" VALUES('0001_resources',1796026895353144);
INSERT INTO "schema_migrations" VALUES('0002_security',1796026895364612);
INSERT INTO "schema_migrations" VALUES('0002_blobs',1796026895371357);
INSERT INTO "schema_migrations" VALUES('0004_url_signing_keys',1796026899786973);
INSERT INTO "schema_migrations" VALUES('0010_jobs',1796026899929193);
CREATE TABLE search_refs (
	resource_type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	target VARCHAR(160) NOT NULL
);
INSERT INTO "search_refs" VALUES('Patient','old','_compartment','Patient/old');
CREATE TABLE search_tokens (
	resource_type VARCHAR(64) NOT NULL, 
	id VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	system VARCHAR(512), 
	value VARCHAR(512) NOT NULL
);
CREATE TABLE signing_keys (
	kid VARCHAR(64) NOT NULL, 
	private_jwk TEXT NOT NULL, 
	created_at BIGINT NOT NULL, 
	PRIMARY KEY (kid)
);
CREATE TABLE url_signing_keys (
	kid VARCHAR(32) NOT NULL, 
	secret VARCHAR(128) NOT NULL, 
	created_at BIGINT NOT NULL, 
	PRIMARY KEY (kid)
);
INSERT INTO "url_signing_keys" VALUES('25ff9a83f492','56o2bGuu-Gc_EzzYHCCxDYMmu3p8rAMMkxLyUw19NSk=',1796026899755180);
CREATE INDEX ix_resources_type_updated ON resources (resource_type, last_updated);
CREATE INDEX ix_versions_type_updated ON resource_versions (resource_type, last_updated);
CREATE INDEX ix_versions_updated ON resource_versions (last_updated);
CREATE INDEX ix_tokens_owner ON search_tokens (resource_type, id);
CREATE INDEX ix_tokens_lookup ON search_tokens (resource_type, param, value);
CREATE INDEX ix_refs_owner ON search_refs (resource_type, id);
CREATE INDEX ix_refs_lookup ON search_refs (resource_type, param, target);
CREATE INDEX ix_blobs_state_created ON blobs (state, created);
CREATE INDEX ix_jobs_subject ON jobs (subject);
CREATE INDEX ix_jobs_dedupe ON jobs (kind, dedupe_key);
CREATE INDEX ix_jobs_ready ON jobs (state, run_after);
COMMIT;
