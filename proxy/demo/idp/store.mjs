// Where the local provider keeps what it issues, and who its people are.
//
// `fileAdapter(path)` is an oidc-provider storage adapter (sessions, interactions, codes, grants,
// tokens) held in memory and, when `path` is given, written to that JSON file on every change and
// read back at start: a restart with another signing key (key rotation) keeps the people's
// grants and refresh tokens, as a real provider's database does. A local provider holds a few
// dozen records, so lookups by uid, user code or grant scan them.
//
// `accountFinder(path)` reads the accounts file on every lookup, so a test can change a person's
// groups or remove a person while the provider runs.

import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';

function loadRecords(path) {
  if (!path || !existsSync(path)) {
    return new Map();
  }
  return new Map(Object.entries(JSON.parse(readFileSync(path, 'utf8'))));
}

export function fileAdapter(path) {
  const records = loadRecords(path);

  function save() {
    if (!path) {
      return;
    }
    const now = Date.now();
    for (const [key, record] of records) {
      if (record.expiresAt !== null && record.expiresAt <= now) {
        records.delete(key);
      }
    }
    const partial = `${path}.partial`;
    writeFileSync(partial, JSON.stringify(Object.fromEntries(records)));
    renameSync(partial, path); // a reader (or a crash) never sees half a file
  }

  function live(key) {
    const record = records.get(key);
    if (record === undefined) {
      return undefined;
    }
    if (record.expiresAt !== null && record.expiresAt <= Date.now()) {
      records.delete(key);
      return undefined;
    }
    return record;
  }

  return class FileAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    scan(matches) {
      for (const key of records.keys()) {
        const record = key.startsWith(`${this.model}:`) ? live(key) : undefined;
        if (record !== undefined && matches(record.payload)) {
          return record.payload;
        }
      }
      return undefined;
    }

    async upsert(id, payload, expiresIn) {
      const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null;
      records.set(this.key(id), { payload, expiresAt });
      save();
    }

    async find(id) {
      return live(this.key(id))?.payload;
    }

    async findByUid(uid) {
      return this.scan((payload) => payload.uid === uid);
    }

    async findByUserCode(userCode) {
      return this.scan((payload) => payload.userCode === userCode);
    }

    async consume(id) {
      const record = live(this.key(id));
      if (record !== undefined) {
        record.payload.consumed = Math.floor(Date.now() / 1000);
        save();
      }
    }

    async destroy(id) {
      records.delete(this.key(id));
      save();
    }

    async revokeByGrantId(grantId) {
      for (const [key, record] of records) {
        if (record.payload.grantId === grantId) {
          records.delete(key);
        }
      }
      save();
    }
  };
}

// The accounts file: a JSON list of people, each with `sub`, `preferred_username`, `password`,
// and the claims the provider releases (`name`, `email`, `email_verified`, `groups`).
export function readAccounts(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

export function accountFinder(path) {
  return async function findAccount(_ctx, sub) {
    const person = readAccounts(path).find((candidate) => candidate.sub === sub);
    if (person === undefined) {
      return undefined; // the provider then refuses the code, refresh token or session
    }
    const { password: _password, ...claims } = person;
    return {
      accountId: sub,
      async claims() {
        return claims; // oidc-provider keeps only those the granted scopes allow
      },
    };
  };
}
