package mqtt

// Outbound topic aliases (MQTT 5.0 §3.3.2.3.4): towards a v5 client whose
// CONNECT had a Topic Alias Maximum above 0, the server gives each topic it
// sends an alias, up to min(that maximum, Options.OutboundTopicAliases).
// The first PUBLISH of a topic carries the topic and its new alias; later
// ones carry the alias and an empty topic. Once every alias is taken, a new
// topic takes over the aliases in turn (first assigned, first replaced),
// again sending the topic with the alias, which re-maps it on the client
// [MQTT-3.3.2-12]. Aliases belong to the network connection: a new
// connection starts with none, resent messages included.

// aliasTable is the outbound aliases of one connection, under conn.wmu.
type aliasTable struct {
	byTopic map[string]uint16
	topics  []string // topics[a-1] has alias a; "" for a free one
	next    int      // index of the alias the next new topic takes
}

func newAliasTable(n int) *aliasTable {
	return &aliasTable{byTopic: map[string]uint16{}, topics: make([]string, n)}
}

// lookup returns topic's alias, and whether the client knows it already;
// if it does not, the alias is the one to send with the topic, recorded by
// assign once the PUBLISH was written.
func (t *aliasTable) lookup(topic string) (alias uint16, known bool) {
	if a, ok := t.byTopic[topic]; ok {
		return a, true
	}
	return uint16(t.next + 1), false
}

// assign records that the client now maps alias (from lookup) to topic.
func (t *aliasTable) assign(topic string, alias uint16) {
	i := int(alias) - 1
	if old := t.topics[i]; old != "" {
		delete(t.byTopic, old)
	}
	t.topics[i] = topic
	t.byTopic[topic] = alias
	t.next = (i + 1) % len(t.topics)
}
