package node

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/metrics"
)

// mqttAuth builds the MQTT front-end's authentication chain, SCRAM users
// (nil if none) and ACL from
// [mqtt], with quire_auth_decisions_total{protocol,result} and
// quire_acl_denied_total{protocol,action} counting what they decide.
func mqttAuth(c *config.MQTT, reg prometheus.Registerer) (*auth.Chain, *auth.ACL, *auth.SCRAM, error) {
	decisions := metrics.Reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Subsystem: "auth", Name: "decisions_total",
		Help: "Connection authentication decisions by protocol and result (allow, deny, error: the hook failed and the client was refused).",
	}, []string{"protocol", "result"}))
	denied := metrics.Reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "acl_denied_total",
		Help: "Publishes and subscribes refused by the ACL, by protocol and action.",
	}, []string{"protocol", "action"}))

	chain := &auth.Chain{AllowAnonymous: c.AllowAnonymous,
		Observe: func(r string) { decisions.WithLabelValues("mqtt", r).Inc() }}
	hashes, scram := map[string]string{}, map[string]string{}
	seen := map[string]bool{}
	for _, u := range c.Users {
		if seen[u.Name] {
			return nil, nil, nil, fmt.Errorf("[[mqtt.users]]: user %q is listed twice", u.Name)
		}
		seen[u.Name] = true
		if u.PasswordHash != "" {
			hashes[u.Name] = u.PasswordHash
		}
		if u.SCRAMSHA256 != "" {
			scram[u.Name] = u.SCRAMSHA256
		}
	}
	if len(hashes) > 0 {
		users, err := auth.NewUsers(hashes, auth.UsersOptions{})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("[[mqtt.users]]: %w", err)
		}
		chain.Steps = append(chain.Steps, users)
	}
	var sc *auth.SCRAM
	if len(scram) > 0 {
		var err error
		if sc, err = auth.NewSCRAM(scram); err != nil {
			return nil, nil, nil, fmt.Errorf("[[mqtt.users]]: %w", err)
		}
	}
	if c.AuthHookURL != "" {
		chain.Steps = append(chain.Steps, &auth.HTTPHook{URL: c.AuthHookURL, Timeout: c.AuthHookTimeout.Std()})
	}

	rules := make([]auth.Rule, len(c.ACL))
	for i, r := range c.ACL {
		act, err := auth.ParseAction(r.Action)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("[[mqtt.acl]] %d: %w", i+1, err)
		}
		rules[i] = auth.Rule{Allow: r.Permission == "allow", Actions: act, Username: r.Username, ClientID: r.ClientID, Topics: r.Topics}
	}
	acl, err := auth.NewACL(rules, c.ACLDefault != "deny")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("[[mqtt.acl]]: %w", err)
	}
	acl.Observe = func(a auth.Action) { denied.WithLabelValues("mqtt", a.String()).Inc() }
	return chain, acl, sc, nil
}
