// Package auth decides who may connect to a front-end and what each client
// may publish and subscribe to. It knows nothing of wire protocols: the MQTT
// front-end (and later Kafka and AMQP) maps a connection to a Client, asks
// an Authenticator at connect time and the ACL on every publish (including
// wills and retained messages) and every subscribe.
//
// # Authentication
//
// A Chain runs its authenticators in order; the first that returns Allow or
// Deny decides. Users is a table of user names with bcrypt hashes (from the
// config file); it ignores user names it does not know, so an HTTPHook after
// it can decide for them. When every step ignores a client, a client
// without a user name is let in only if AllowAnonymous is set, and any
// other is refused. A chain with no steps at all is an open broker: every
// client is allowed when AllowAnonymous is set, none otherwise.
//
// bcrypt is deliberately slow (tens of milliseconds per check at the
// default cost); to keep a storm of reconnects from burning the CPU, Users
// remembers successful checks for CacheTTL, keyed by a keyed hash of the
// password (never the password itself).
//
// HTTPHook POSTs {"clientid","username","password","listener","peer",
// "common_name"} as JSON to a URL. 200 with {"result":"allow"|"deny"|
// "ignore"} decides (an empty 200 or 204 allows); 401 and 403 deny; any
// other answer, a timeout or a broken connection is an error, which the
// chain turns into a refusal with ErrUnavailable (MQTT 5: 0x88 Server
// unavailable) rather than letting the client in.
//
// # Authorisation
//
// An ACL is a list of rules tried in order; the first rule whose user name,
// client id, action and topic filter all match decides, and Default decides
// when none does. In a rule's topic filters %u stands for the client's user
// name and %c for its client id. A substitution that would put '+', '#' or
// '/' into the filter (a user name like "a/#") makes the rule fail closed:
// an allow rule does not match, a deny rule does.
//
// For a publish, the topic name must match the rule's filter. For a
// subscribe, an allow rule must cover the requested filter (every topic the
// subscription could receive matches the rule: "a/#" covers "a/+/b"), and a
// deny rule applies as soon as the two filters share a topic. Shared
// subscriptions are checked on their inner filter ("$share/g/a/b" → "a/b";
// the front-end passes it).
package auth
