from hyperrag import RAGOptimize, RAGOptimizeConfig, LLMModel, Query

# Step 1: Configure
rago = RAGOptimize(RAGOptimizeConfig(
    paradigm="hyperscale",
    model=LLMModel.LLAMA_3_1_8B,
    gpu_budget_gb=4.0,
    host_budget_gb=16.0,
))

# Step 2: Find optimal schedule
result = rago.optimize()
print(result.summary())  # the best schedule's modelled TTFT, QPS per chip and hit rate, and the frontier's size

# Step 3: Build controller
ctrl = rago.build_controller()

# Step 4: Process a query
r = ctrl.process(Query(
    query_id="q1",
    text="What is transformer attention?",
    doc_ids=["d1", "d2"],
    doc_tokens=[512, 256],
))
print(f"TTFT={r.ttft_s*1000:.1f}ms  hit={r.cache_hit}")

# Step 5: Aggregate metrics
m = ctrl.metrics()
print(f"hit_rate={m.hit_rate:.1%}  gpu_mib={m.gpu_used_mib:.0f}")
