-- Made by agent-sessions 0.1.0 (commit cd4b008), the release before the rename: its migrations
-- to head (0002) on SQLite, then sessions, checkpoints and shared state (sqlite3 iterdump).
BEGIN TRANSACTION;
CREATE TABLE agent_sessions_alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT agent_sessions_alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "agent_sessions_alembic_version" VALUES('0002');
CREATE TABLE agent_sessions_checkpoints (
	session_id CHAR(32) NOT NULL, 
	seq INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	data JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_agent_sessions_checkpoints PRIMARY KEY (session_id, seq), 
	CONSTRAINT fk_agent_sessions_checkpoints_session_id FOREIGN KEY(session_id) REFERENCES agent_sessions_sessions (id) ON DELETE CASCADE
);
INSERT INTO "agent_sessions_checkpoints" VALUES('db0bf26e13d34090aaa1635cac952330',1,'session_created','{"agent_type": "planner", "user_id": "alice"}','2026-11-01 12:00:00.000000');
INSERT INTO "agent_sessions_checkpoints" VALUES('db0bf26e13d34090aaa1635cac952330',2,'plan','{"steps": ["search", "write"]}','2026-11-01 12:01:00.000000');
INSERT INTO "agent_sessions_checkpoints" VALUES('db0bf26e13d34090aaa1635cac952330',3,'search','{"hits": 12}','2026-11-01 12:01:00.000000');
INSERT INTO "agent_sessions_checkpoints" VALUES('4beddf45337845d8b1681a7151a65b98',1,'session_created','{"agent_type": "coder", "user_id": "bob"}','2026-11-01 12:01:00.000000');
INSERT INTO "agent_sessions_checkpoints" VALUES('a72b1bc78be14c90b7537db9f66eacc1',1,'session_created','{"agent_type": "planner", "user_id": ""}','2026-11-01 12:02:00.000000');
CREATE TABLE agent_sessions_sessions (
	id CHAR(32) NOT NULL, 
	agent_type VARCHAR(128) NOT NULL, 
	user_id VARCHAR(256) DEFAULT '' NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	context JSON NOT NULL, 
	metadata JSON NOT NULL, 
	checkpoint_count INTEGER DEFAULT '0' NOT NULL, 
	version INTEGER DEFAULT '1' NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	last_heartbeat DATETIME NOT NULL, "key" VARCHAR(128), 
	CONSTRAINT pk_agent_sessions_sessions PRIMARY KEY (id), 
	CONSTRAINT ck_agent_sessions_sessions_state CHECK (state IN ('active', 'paused', 'completed', 'failed', 'deleted'))
);
INSERT INTO "agent_sessions_sessions" VALUES('db0bf26e13d34090aaa1635cac952330','planner','alice','active','{"goal": "Q3"}','{"team": "a"}',3,2,'2026-11-01 12:00:00.000000','2026-11-01 12:01:00.000000','2026-11-01 12:00:00.000000','chat-42');
INSERT INTO "agent_sessions_sessions" VALUES('4beddf45337845d8b1681a7151a65b98','coder','bob','completed','{"lang": "py"}','{}',1,2,'2026-11-01 12:01:00.000000','2026-11-01 12:02:00.000000','2026-11-01 12:02:00.000000',NULL);
INSERT INTO "agent_sessions_sessions" VALUES('a72b1bc78be14c90b7537db9f66eacc1','planner','','deleted','{}','{}',1,2,'2026-11-01 12:02:00.000000','2026-11-01 12:02:00.000000','2026-11-01 12:02:00.000000',NULL);
CREATE TABLE agent_sessions_shared_state (
	agent_type VARCHAR(128) NOT NULL, 
	scope VARCHAR(8) NOT NULL, 
	user_id VARCHAR(256) NOT NULL, 
	state JSON NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_agent_sessions_shared_state PRIMARY KEY (agent_type, scope, user_id), 
	CONSTRAINT ck_agent_sessions_shared_state_scope CHECK (scope IN ('app', 'user')), 
	CONSTRAINT ck_agent_sessions_shared_state_app_scope_has_no_user CHECK (scope = 'user' OR user_id = '')
);
INSERT INTO "agent_sessions_shared_state" VALUES('planner','user','alice','{"theme": "dark"}','2026-11-01 12:02:00.000000');
INSERT INTO "agent_sessions_shared_state" VALUES('planner','app','','{"lang": "en"}','2026-11-01 12:02:00.000000');
CREATE INDEX ix_agent_sessions_sessions_user_id_created_at_id ON agent_sessions_sessions (user_id, created_at, id);
CREATE INDEX ix_agent_sessions_sessions_agent_type_created_at_id ON agent_sessions_sessions (agent_type, created_at, id);
CREATE INDEX ix_agent_sessions_sessions_created_at_id ON agent_sessions_sessions (created_at, id);
CREATE INDEX ix_agent_sessions_sessions_state_last_heartbeat ON agent_sessions_sessions (state, last_heartbeat);
CREATE UNIQUE INDEX uq_agent_sessions_sessions_agent_type_user_id_key ON agent_sessions_sessions (agent_type, user_id, "key") WHERE key IS NOT NULL AND state <> 'deleted';
CREATE INDEX ix_agent_sessions_checkpoints_session_id_created_at ON agent_sessions_checkpoints (session_id, created_at);
COMMIT;
