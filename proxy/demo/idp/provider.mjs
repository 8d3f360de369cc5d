// pgwarden's local OpenID provider: oidc-provider (a certified OpenID Provider implementation)
// on 127.0.0.1, configured from files its launcher writes: single sign-on for `pgwarden demo`
// and for the tests against a real provider. proxy/demo/local_idp.py installs its node_modules
// and starts it; tests/fixtures/idp.py builds the tests' provider on that and plays the browser.
//
//   node provider.mjs --clients clients.json --accounts accounts.json
//                     [--port N] [--jwks jwks.json] [--state state.json]
//                     [--id-token-ttl S] [--access-token-ttl S] [--refresh-token-ttl S]
//                     [--rotate-refresh-tokens always|never]
//
// --port (or PGWARDEN_IDP_PORT): 0 or absent picks a free port; the issuer is
//   http://127.0.0.1:<port>. --clients: a JSON list of client metadata (RFC 7591 names), as
//   oidc-provider registers them. --accounts: a JSON list of people (store.mjs), re-read on every
//   lookup. --jwks: {"keys": [private JWKs]}; the first key of an algorithm signs, all are
//   published at /jwks; without it one RS256 key is made at start. --state: a file keeping
//   grants and tokens across a restart (browser sessions end: cookie keys are new each start).
//   clients.sample.json and accounts.sample.json beside this file show the two files' shapes.
//
// Enabled: authorization code flow with PKCE (S256) required of every client, device flow
// (RFC 8628), refresh tokens for every client allowed the refresh_token grant, revocation,
// introspection, userinfo. Scopes: openid profile email groups offline_access; the ID token
// carries the claims of its scopes. Prints `listening <issuer>` once it accepts connections;
// SIGTERM or SIGINT closes it.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

import { handleInteraction } from './interactions.mjs';
import * as pages from './pages.mjs';
import { accountFinder, fileAdapter } from './store.mjs';

const OPTIONS = {
  port: { type: 'string', default: process.env.PGWARDEN_IDP_PORT ?? '0' },
  clients: { type: 'string' },
  accounts: { type: 'string' },
  jwks: { type: 'string' },
  state: { type: 'string' },
  'id-token-ttl': { type: 'string', default: '300' },
  'access-token-ttl': { type: 'string', default: '300' },
  'refresh-token-ttl': { type: 'string', default: '86400' },
  'rotate-refresh-tokens': { type: 'string', default: 'always' },
};

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function seconds(args, name) {
  const value = Number(args[name]);
  if (!Number.isInteger(value) || value <= 0) {
    fail(`--${name} must be a positive number of seconds, not ${JSON.stringify(args[name])}`);
  }
  return value;
}

function signingKeys(path) {
  if (path) {
    return JSON.parse(readFileSync(path, 'utf8'));
  }
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `generated-${randomBytes(4).toString('hex')}`;
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' }] };
}

function configuration(args) {
  const idToken = seconds(args, 'id-token-ttl');
  const accessToken = seconds(args, 'access-token-ttl');
  const refreshToken = seconds(args, 'refresh-token-ttl');
  if (!['always', 'never'].includes(args['rotate-refresh-tokens'])) {
    fail('--rotate-refresh-tokens must be "always" or "never"');
  }
  return {
    adapter: fileAdapter(args.state),
    clients: JSON.parse(readFileSync(args.clients, 'utf8')),
    findAccount: accountFinder(args.accounts),
    jwks: signingKeys(args.jwks),
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
      acr: null, sid: null, auth_time: null, iss: null,
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    conformIdTokenClaims: false, // the ID token carries its scopes' claims (groups above all)
    pkce: { required: () => true },
    responseTypes: ['code'], // the code flow only: no implicit or hybrid tokens in URLs
    features: {
      devInteractions: { enabled: false }, // interactions.mjs signs people in instead
      deviceFlow: {
        enabled: true,
        userCodeInputSource: pages.userCodeInputSource,
        userCodeConfirmSource: pages.userCodeConfirmSource,
        successSource: pages.successSource,
      },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false, // a refresh token outlives the browser's session
    rotateRefreshToken: () => args['rotate-refresh-tokens'] === 'always',
    renderError: pages.renderError,
    ttl: {
      AccessToken: accessToken,
      IdToken: idToken,
      RefreshToken: refreshToken,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Interaction: 600,
      Grant: refreshToken,
      Session: refreshToken,
    },
  };
}

function logErrors(provider) {
  // What went wrong on the provider's side goes to its stderr, which the fixture keeps.
  for (const event of ['server_error', 'grant.error', 'authorization.error',
    'device_authorization.error', 'introspection.error', 'revocation.error']) {
    provider.on(event, (_ctx, error) => {
      const detail = [error.error_description, error.error_detail].filter(Boolean).join(': ');
      process.stderr.write(`${event}: ${error.message} (${detail})\n`);
    });
  }
}

function serve(args) {
  let handle;
  const server = createServer((req, res) => handle(req, res));
  server.listen(Number(args.port), '127.0.0.1', () => {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    const provider = new Provider(issuer, configuration(args));
    logErrors(provider);
    const callback = provider.callback();
    handle = (req, res) => {
      handleInteraction(provider, args.accounts, req, res)
        .then((handled) => handled || callback(req, res))
        .catch((error) => {
          process.stderr.write(`interaction: ${error.message}\n`);
          if (!res.headersSent) {
            res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
            res.end(pages.page('error', 'Sign-in failed', `<p id="error" role="alert">${
              pages.escapeHtml(error.message)}</p>`));
          }
        });
    };
    process.stdout.write(`listening ${issuer}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections(); // keep-alive connections would hold the close open
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

const { values: args } = parseArgs({ options: OPTIONS, strict: true });
if (!args.clients || !args.accounts) {
  fail('--clients and --accounts are required');
}
serve(args);
