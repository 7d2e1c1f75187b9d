using KvPacket.Training;
using Spectre.Console;

namespace KvPacket.Cli.Training;

/// <summary>Runs a distillation under a Spectre.Console progress bar (on standard error) showing the step, loss, held-out KL and ETA; then prints its summary.</summary>
internal static class TrainingDisplay
{
    public static DistillationRun Run(string title, AdapterDistillation distillation, IReadOnlyList<DistillationExample> train, IReadOnlyList<DistillationExample> heldOut,
        int steps, CancellationToken cancellation = default)
    {
        DistillationRun? run = null;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (Console.IsErrorRedirected) console.Profile.Width = 240; // a log file: no wrapping at an imagined 80 columns
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                var task = context.AddTask(Markup.Escape(title), maxValue: steps);
                run = distillation.Train(train, heldOut, p =>
                {
                    task.Value = p.Step;
                    task.Description = Markup.Escape($"{title}  step {p.Step}/{p.TotalSteps}  loss {p.Loss:F3}  held-out KL {p.HeldOutKl:F4} (best {p.BestHeldOutKl:F4})  lr {p.LearningRate:F4}");
                }, cancellation);
                task.Value = steps;
            });
        var r = run!;
        Console.WriteLine( // the summary goes with the results on standard output; the bar stays on standard error
            $"{title}: held-out KL {r.InitialHeldOutKl:F4} → {r.BestHeldOutKl:F4} (best at step {r.BestStep} of {r.StepsRun}{(r.StoppedEarly ? ", stopped early" : "")}); " +
            $"{r.ExamplesPerSecond:F2} examples/s, {r.RowsPerSecond:F0} rows/s, {r.Elapsed.TotalSeconds:F1} s");
        return r;
    }
}
