// The provider's sign-in and consent steps (oidc-provider's "interactions"), in place of its
// development-only pages: a person signs in with the username and password of the accounts file
// (a wrong one is refused), then allows or denies what the client asks for.
//
//   GET  /interaction/<uid>          the sign-in or the consent page, whichever the provider asks
//   POST /interaction/<uid>/login    username + password
//   POST /interaction/<uid>/confirm  allow: a grant of the scopes and claims asked for
//   POST /interaction/<uid>/abort    deny: the client gets access_denied

import { timingSafeEqual } from 'node:crypto';

import { consentPage, loginPage } from './pages.mjs';
import { readAccounts } from './store.mjs';

const MAX_FORM_BYTES = 16 * 1024; // a username and a password; anything larger is not a person

const ROUTE = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/;

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function sameSecret(given, expected) {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(html);
}

async function clientName(provider, clientId) {
  const client = await provider.Client.find(clientId);
  return client?.clientName || clientId;
}

async function show(provider, req, res, details) {
  const name = await clientName(provider, details.params.client_id);
  if (details.prompt.name === 'login') {
    send(res, 200, loginPage(details.uid, name, ''));
    return;
  }
  const scopes = details.prompt.details.missingOIDCScope ?? [];
  send(res, 200, consentPage(details.uid, name, scopes));
}

async function login(provider, req, res, details, accountsPath) {
  const form = await readForm(req);
  const username = form.get('username') ?? '';
  const password = form.get('password') ?? '';
  const person = readAccounts(accountsPath).find((p) => p.preferred_username === username);
  if (person === undefined || !sameSecret(password, String(person.password))) {
    const name = await clientName(provider, details.params.client_id);
    send(res, 401, loginPage(details.uid, name, 'Wrong username or password.'));
    return;
  }
  await provider.interactionFinished(req, res, {
    login: { accountId: person.sub },
  }, { mergeWithLastSubmission: false });
}

async function confirm(provider, req, res, details) {
  const { grantId, session, params, prompt: { details: missing } } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) {
    grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  }
  if (missing.missingOIDCClaims) {
    grant.addOIDCClaims(missing.missingOIDCClaims);
  }
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  await provider.interactionFinished(req, res, {
    consent: { grantId: await grant.save() },
  }, { mergeWithLastSubmission: true });
}

async function abort(provider, req, res) {
  await provider.interactionFinished(req, res, {
    error: 'access_denied',
    error_description: 'the person denied the request',
  }, { mergeWithLastSubmission: false });
}

// Handles the request and returns true when its path is an interaction's; false otherwise.
export async function handleInteraction(provider, accountsPath, req, res) {
  const match = ROUTE.exec(new URL(req.url, 'http://127.0.0.1').pathname);
  if (match === null) {
    return false;
  }
  const [, uid, step] = match;
  const expected = step === undefined ? 'GET' : 'POST';
  if (req.method !== expected) {
    send(res, 405, 'method not allowed');
    return true;
  }
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'this sign-in page does not belong to the current sign-in; start again');
  } else if (step === undefined) {
    await show(provider, req, res, details);
  } else if (step === 'login' && details.prompt.name === 'login') {
    await login(provider, req, res, details, accountsPath);
  } else if (step === 'confirm' && details.prompt.name === 'consent') {
    await confirm(provider, req, res, details);
  } else if (step === 'abort') {
    await abort(provider, req, res);
  } else {
    send(res, 400, `this sign-in is at its ${details.prompt.name} step, not ${step}`);
  }
  return true;
}
