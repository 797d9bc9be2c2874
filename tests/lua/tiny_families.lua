-- Tiny models of every family with a causal attention of its own (minGPT,
-- Llama with GQA, Mistral with a window that binds, Mixtral, OPT), for
-- tests that run each family the same way: families(V) -> {{name, make}}
-- where make() builds the model (not materialized) over V tokens.
return function(V)
   return {
      {'minGPT', function()
         return require('models.mingpt').GPT {vocab_size = V, block_size = 16, n_layer = 2, n_head = 2, n_embd = 16}
      end},
      {'Llama (GQA)', function()
         return require('models.llama').Llama {vocab_size = V, hidden_size = 16, intermediate_size = 24,
                                               num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2}
      end},
      {'Mistral (window 3)', function()
         return require('models.mistral').Mistral {vocab_size = V, hidden_size = 16, intermediate_size = 24,
                                                   num_hidden_layers = 2, num_attention_heads = 4,
                                                   num_key_value_heads = 1, sliding_window = 3}
      end},
      {'Mixtral', function()
         return require('models.mixtral').Mixtral {vocab_size = V, hidden_size = 16, intermediate_size = 24,
                                                   num_hidden_layers = 2, num_attention_heads = 4,
                                                   num_key_value_heads = 2, num_local_experts = 3,
                                                   num_experts_per_tok = 2}
      end},
      {'OPT', function()
         return require('models.opt').OPT {vocab_size = V, hidden_size = 16, ffn_dim = 24, num_hidden_layers = 2,
                                           num_attention_heads = 2, max_position_embeddings = 16}
      end},
   }
end
