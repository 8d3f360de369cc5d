// The local provider's HTML pages: sign-in, consent, the device flow's code entry, confirmation
// and success, and errors. Plain forms that work without JavaScript and load nothing from
// elsewhere (it runs on loopback only). Each page's `main` and each form carry an `id` the
// tests' browser stand-in (tests/fixtures/idp_browser.py) recognises the page by.

export function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

export function page(kind, title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><main id="${kind}"><h1>${escapeHtml(title)}</h1>
${body}
</main></body>
</html>
`;
}

function alert(message) {
  return message ? `<p id="error" role="alert">${escapeHtml(message)}</p>` : '';
}

export function loginPage(uid, clientName, message) {
  return page('login', 'Sign in', `<p>to continue to ${escapeHtml(clientName)}</p>
${alert(message)}
<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login">
  <label>Username <input type="text" name="username" autocomplete="username" required></label>
  <label>Password <input type="password" name="password" autocomplete="current-password" required></label>
  <button type="submit">Sign in</button>
</form>`);
}

export function consentPage(uid, clientName, scopes) {
  const items = scopes.map((scope) => `<li>${escapeHtml(scope)}</li>`).join('');
  return page('consent', 'Allow access', `<p>${escapeHtml(clientName)} asks for:</p>
<ul id="scopes">${items}</ul>
<form id="consent" method="post" action="/interaction/${escapeHtml(uid)}/confirm">
  <button type="submit">Allow</button>
</form>
<form id="deny" method="post" action="/interaction/${escapeHtml(uid)}/abort">
  <button type="submit">Deny</button>
</form>`);
}

// features.deviceFlow's page sources: oidc-provider gives the form (its CSRF token included).
export async function userCodeInputSource(ctx, form, _out, err) {
  let message = '';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    message = 'The code you entered is not valid. Check it and try again.';
  } else if (err && err.name === 'AbortedError') {
    message = 'The sign-in request was cancelled.';
  } else if (err) {
    message = 'The request could not be processed.';
  }
  ctx.body = page('device-input', 'Connect a device', `${alert(message)}
<p>Enter the code your device shows.</p>
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

export async function userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
  const name = client.clientName || client.clientId;
  ctx.body = page('device-confirm', 'Confirm the device', `<p>${escapeHtml(name)} shows the code
<code id="user-code">${escapeHtml(userCode)}</code>.</p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
}

export async function successSource(ctx) {
  const name = ctx.oidc.client.clientName || ctx.oidc.client.clientId;
  ctx.body = page('device-done', 'Device connected',
    `<p>You are signed in to ${escapeHtml(name)}; you can close this page.</p>`);
}

export async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('error', 'Sign-in failed', `<p id="error" role="alert">${escapeHtml(out.error)}:
${escapeHtml(out.error_description ?? '')}</p>`);
}
