"""Single sign-on: people sign in with the organization's OpenID provider (issue 18).

`settings` (the config section), `discovery` and `keys` (what the provider publishes), `tokens`
(ID-token checks), `flows` (the device and browser flows against the provider), `sessions` (the
API sessions a sign-in yields), `people` (the policy with signed-in people merged in), `signin`
(one sign-in, start to end).
"""
