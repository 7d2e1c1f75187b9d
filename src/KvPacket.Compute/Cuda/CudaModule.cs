namespace KvPacket.Compute.Cuda;

/// <summary>A loaded module: its kernels by name, and a launcher that checks every launch.</summary>
public sealed unsafe class CudaModule
{
    private readonly CudaDevice _device;
    private readonly nint _module;
    private readonly Dictionary<string, nint> _functions = new();

    internal CudaModule(CudaDevice device, nint module)
    {
        _device = device;
        _module = module;
    }

    /// <summary>The kernel called <paramref name="name"/>.</summary>
    public nint Function(string name)
    {
        if (!_functions.TryGetValue(name, out nint function))
        {
            CudaDriver.Check(CudaDriver.cuModuleGetFunction(out function, _module, name), $"cuModuleGetFunction({name})");
            _functions[name] = function;
        }
        return function;
    }

    /// <summary>Queues kernel <paramref name="function"/> on the device's stream; <paramref name="arguments"/> point at each argument's value.</summary>
    public void Launch(nint function, (uint X, uint Y) grid, uint block, params ReadOnlySpan<nint> arguments) => Launch(function, (grid.X, grid.Y, 1), block, arguments);

    /// <summary>
    /// Launch kernels as programmatic dependents of the previous kernel on the stream (sm_90+): each may start while
    /// that one finishes and waits for it in code (kernels.cu's WAIT_FOR_PREVIOUS), so a kernel's start and its
    /// independent prologue overlap the previous kernel's tail. Off by default; ignored before sm_90.
    /// </summary>
    public bool DependentLaunches { get; set; }

    /// <summary>Queues kernel <paramref name="function"/> over a three-dimensional grid.</summary>
    public void Launch(nint function, (uint X, uint Y, uint Z) grid, uint block, params ReadOnlySpan<nint> arguments)
    {
        _device.MakeCurrent();
        var attribute = new CudaDriver.LaunchAttribute { Id = CudaDriver.ProgrammaticStreamSerialization, Value = 1 };
        var config = new CudaDriver.LaunchConfig
        {
            GridX = grid.X, GridY = grid.Y, GridZ = grid.Z, BlockX = block, BlockY = 1, BlockZ = 1, Stream = _device.Stream,
            Attributes = &attribute, AttributeCount = DependentLaunches && _device.Architecture >= 90 ? 1u : 0u,
        };
        fixed (nint* pointers = arguments)
            CudaDriver.Check(CudaDriver.cuLaunchKernelEx(&config, function, (void**)pointers, null), "cuLaunchKernelEx");
    }
}
