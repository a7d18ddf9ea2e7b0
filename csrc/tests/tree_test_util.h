#pragma once
// Helpers shared by the knowledge-tree tests.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "hyperrag/knowledge_tree.h"

namespace hyperrag::testing {

// T(cached, new) grows with both: a document computed on a long cached
// prefix costs more per token (attention over the prefix).
inline CostProfile test_profile() {
  return CostProfile({0, 1024, 4096}, {64, 512, 2048},
                     {{0.010, 0.050, 0.200}, {0.020, 0.090, 0.330}, {0.060, 0.200, 0.700}});
}

inline std::map<std::string, std::int64_t> caps(std::int64_t gpu, std::int64_t host = 0, std::int64_t remote = 0) {
  std::map<std::string, std::int64_t> c{{"gpu", gpu}};
  if (host) c["host"] = host;
  if (remote) c["remote"] = remote;
  return c;
}

// Everything observable about a tree, for "unchanged after a failed call".
struct Snapshot {
  TreeStats stats;
  std::vector<NodeInfo> nodes;
};

inline Snapshot snapshot(const KnowledgeTree& t) {
  Snapshot s{t.stats(), {}};
  for (NodeId id : t.node_ids()) s.nodes.push_back(t.node(id));
  return s;
}

inline void expect_same(const Snapshot& a, const Snapshot& b) {
  EXPECT_EQ(a.stats.num_nodes, b.stats.num_nodes);
  EXPECT_EQ(a.stats.interned_names, b.stats.interned_names);
  EXPECT_EQ(a.stats.used_bytes, b.stats.used_bytes);
  EXPECT_EQ(a.stats.capacity_bytes, b.stats.capacity_bytes);
  EXPECT_EQ(a.stats.evictions, b.stats.evictions);
  EXPECT_EQ(a.stats.clock, b.stats.clock);
  EXPECT_EQ(a.stats.lookups, b.stats.lookups);
  ASSERT_EQ(a.nodes.size(), b.nodes.size());
  for (std::size_t i = 0; i < a.nodes.size(); ++i) {
    const NodeInfo& x = a.nodes[i];
    const NodeInfo& y = b.nodes[i];
    EXPECT_EQ(x.node_id, y.node_id);
    EXPECT_EQ(x.resident_tiers, y.resident_tiers) << x.doc_id;
    EXPECT_EQ(x.priorities, y.priorities) << x.doc_id;
    EXPECT_EQ(x.lock_count, y.lock_count);
    EXPECT_EQ(x.frequency, y.frequency);
    EXPECT_EQ(x.last_access, y.last_access);
    EXPECT_EQ(x.children, y.children);
  }
}

#define EXPECT_INVARIANTS(tree)                                   \
  do {                                                            \
    const auto problems_ = (tree).check_invariants();             \
    EXPECT_TRUE(problems_.empty()) << ::testing::PrintToString(problems_); \
  } while (0)

}  // namespace hyperrag::testing
