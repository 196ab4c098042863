trainer data mix --counts flan_v2_cot=94,codealpaca=80,lima=33,alpaca_gpt4=113 --seed 0 --data-dir /work/shared/data --output /work/main/runs/table1-smollm2/stages/data/mix-8691b80a1f24/sft.jsonl
