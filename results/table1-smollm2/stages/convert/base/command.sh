harness convert --model /root/.cache/dtm/models/SmolLM2-135M-Instruct.Q4_1.gguf --output /work/main/runs/table1-smollm2/stages/convert/base-ecd0b4d55a02/model --overwrite
